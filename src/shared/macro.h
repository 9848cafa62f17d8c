/* Small macros shared by echod and echoc: cleanup attributes, fd ownership, string equality. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _noreturn_ __attribute__((noreturn))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _unused_ __attribute__((unused))

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define streq(a, b) (strcmp((a), (b)) == 0)
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* Take ownership of a value, leaving the old holder "empty" (used to move fds and memory out of
 * cleanup scope). Plain functions rather than statement expressions: -Wpedantic stays clean. */
static inline int take_fd(int *fd) {
        int r = *fd;
        *fd = -1;
        return r;
}
static inline void *take_ptr(void *pp) {
        void *r = *(void **) pp;
        *(void **) pp = NULL;
        return r;
}
#define TAKE_FD(fd) take_fd(&(fd))
#define TAKE_PTR(p) take_ptr(&(p))

/* Close an fd preserving errno; returns -1 so that "fd = safe_close(fd);" resets it. */
static inline int safe_close(int fd) {
        if (fd >= 0) {
                int saved = errno;
                (void) close(fd);
                errno = saved;
        }
        return -1;
}

static inline void closep(int *fd) {
        safe_close(*fd);
}

static inline void *mfree(void *p) {
        free(p);
        return NULL;
}

static inline void freep(void *p) {
        free(*(void **) p);
}

/* errno as a negative return value, never 0 even if errno was clobbered. */
static inline int negative_errno(void) {
        return errno > 0 ? -errno : -EIO;
}
