/* Classic daemonising for non-systemd use: fork, setsid, fork, pidfile, and a readiness pipe.
 * Follows daemon(7) "SysV Daemons"; the pidfile is libbsd's flock'ed pidfile(3). */
#include "echod/daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <libutil.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "echod/log.h"
#include "shared/io.h"
#include "shared/macro.h"

static struct pidfh *pidfh;
static int ready_fd = -1;

/* The starting process: wait for "READY" or error text, then exit. */
_Noreturn static void wait_for_daemon(int fd, pid_t child) {
        char buf[4096];
        size_t len = 0;
        ssize_t n;

        while (len < sizeof(buf) - 1 && (n = read(fd, buf + len, sizeof(buf) - 1 - len)) != 0) {
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                len += (size_t) n;
        }
        buf[len] = 0;
        (void) waitpid(child, NULL, 0); /* the intermediate process exits at once */
        if (len >= 6 && memcmp(buf + len - 6, "READY\n", 6) == 0)
                exit(EXIT_SUCCESS);
        if (len > 0)
                fprintf(stderr, "echod: %s", buf);
        else
                fprintf(stderr, "echod: the daemon exited during startup\n");
        exit(EXIT_FAILURE);
}

void daemon_close_inherited_fds(void) {
        /* keep stdio and the sockets systemd passed (LISTEN_FDS, for this pid only) */
        int n = sd_listen_fds(0);

        (void) close_range((unsigned) (SD_LISTEN_FDS_START + (n > 0 ? n : 0)), ~0U, 0);
}

int daemon_lock_pidfile(const char *pidfile) {
        pid_t otherpid;

        if (!pidfile || !pidfile[0])
                return 0;
        pidfh = pidfile_open(pidfile, 0644, &otherpid);
        if (!pidfh)
                return errno == EEXIST ? -EEXIST : negative_errno();
        return 0;
}

int daemonize(void) {
        int pipefd[2];
        pid_t pid;

        if (pipe2(pipefd, O_CLOEXEC) < 0)
                return negative_errno();

        fflush(NULL);
        pid = fork();
        if (pid < 0)
                return negative_errno();
        if (pid > 0) {
                close(pipefd[1]);
                wait_for_daemon(pipefd[0], pid);
        }
        close(pipefd[0]);

        if (setsid() < 0)
                _exit(EXIT_FAILURE);
        pid = fork(); /* not a session leader: can never acquire a controlling tty */
        if (pid < 0)
                _exit(EXIT_FAILURE);
        if (pid > 0)
                _exit(EXIT_SUCCESS);

        umask(022);
        if (chdir("/") < 0)
                _exit(EXIT_FAILURE);
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(null, STDOUT_FILENO) < 0 ||
            dup2(null, STDERR_FILENO) < 0)
                _exit(EXIT_FAILURE);
        if (null > STDERR_FILENO)
                close(null);

        ready_fd = pipefd[1];
        log_set_startup_fd(ready_fd);
        return 0;
}

int daemon_write_pidfile(void) {
        if (pidfh && pidfile_write(pidfh) < 0)
                return negative_errno();
        return 0;
}

void daemon_ready(void) {
        if (ready_fd < 0)
                return;
        log_set_startup_fd(-1);
        (void) write_full(ready_fd, "READY\n", 6);
        ready_fd = safe_close(ready_fd);
}

void daemon_remove_pidfile(void) {
        if (!pidfh)
                return;
        /* after dropping root the directory may not let us unlink: leave an empty file then */
        int fd = pidfile_fileno(pidfh);
        if (fd >= 0)
                (void) ftruncate(fd, 0);
        (void) pidfile_remove(pidfh);
        pidfh = NULL;
}
