/* libFuzzer target: echod.conf (config_load: comment stripping, libconfuse, our validators).
 * Properties: no crash, leak or UB; a refused file always comes with an error message; an
 * accepted file survives config_dump → config_load → config_dump unchanged. libconfuse itself
 * is a system library (not instrumented for coverage, but its allocations are checked); it
 * expands ${VAR} from the environment, which is fine here. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "echod/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One memfd per file we load; config_load opens them by /proc path like any other file. */
static int fd_input = -1, fd_dump = -1;
static char path_input[64], path_dump[64];

static void die(const char *what) {
        perror(what);
        abort();
}

static void memfd_open(const char *name, int *fd, char *path, size_t size) {
        *fd = memfd_create(name, MFD_CLOEXEC);
        if (*fd < 0)
                die("memfd_create");
        snprintf(path, size, "/proc/self/fd/%d", *fd);
}

static void memfd_set(int fd, const void *data, size_t size) {
        if (ftruncate(fd, 0) < 0)
                die("ftruncate");
        if (size > 0 && pwrite(fd, data, size, 0) != (ssize_t) size)
                die("pwrite");
}

static char *dump(const Config *c, size_t *ret_size) {
        char *buf = NULL;
        FILE *f = open_memstream(&buf, ret_size);

        if (!f)
                die("open_memstream");
        config_dump(c, f);
        if (fclose(f) != 0)
                die("fclose");
        return buf;
}

static void check_refusal(int r, const char *error, const char *path) {
        if (r == -ENOMEM)
                return;
        if (r != -EINVAL) {
                fprintf(stderr, "config_load returned %d, not -EINVAL\n", r);
                abort();
        }
        if (!error || strncmp(error, path, strlen(path)) != 0) {
                fprintf(stderr, "refused without an error message naming the file: %s\n", error ? error : "(null)");
                abort();
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Config *c = NULL, *c2 = NULL;
        char *error = NULL, *d1, *d2;
        size_t n1, n2;
        int r;

        if (fd_input < 0) {
                memfd_open("fuzz-config", &fd_input, path_input, sizeof(path_input));
                memfd_open("fuzz-config-dump", &fd_dump, path_dump, sizeof(path_dump));
        }

        memfd_set(fd_input, data, size);
        r = config_load(path_input, &c, &error);
        if (r < 0) {
                check_refusal(r, error, path_input);
                free(error);
                return 0;
        }
        if (error) {
                fprintf(stderr, "accepted with an error message: %s\n", error);
                abort();
        }

        d1 = dump(c, &n1);
        memfd_set(fd_dump, d1, n1);
        r = config_load(path_dump, &c2, &error);
        if (r < 0) {
                fprintf(stderr, "config_dump output does not load again: %s\n--- dump ---\n%s", error, d1);
                abort();
        }
        d2 = dump(c2, &n2);
        if (n1 != n2 || memcmp(d1, d2, n1) != 0) {
                fprintf(stderr, "dump → load → dump differs\n--- first ---\n%s--- second ---\n%s", d1, d2);
                abort();
        }

        free(d1);
        free(d2);
        config_free(c);
        config_free(c2);
        return 0;
}
