/* Classic daemonising for non-systemd use: fork, setsid, fork, pidfile, and a readiness pipe.
 * Follows daemon(7) "SysV Daemons". The pidfile is flock'ed like libbsd's pidfile(3), but opened
 * here with O_NOFOLLOW: echod opens it as root, and pidfile(3) would follow a symlink planted at
 * the path and overwrite whatever it points to. */
#include "echod/daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "echod/log.h"
#include "shared/io.h"
#include "shared/macro.h"

static int pidfile_fd = -1;
static char *pidfile_path;
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
        _cleanup_(closep) int fd = -1;
        struct stat st;

        if (!pidfile || !pidfile[0])
                return 0;
        /* never truncate here: a locked file is another echod's, and its pid must stay */
        fd = open(pidfile, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0644);
        if (fd < 0) {
                int r = negative_errno();
                if (r == -ELOOP && lstat(pidfile, &st) == 0 && S_ISLNK(st.st_mode))
                        log_error("%s is a symbolic link: refusing to follow it (the pidfile must be a regular file)",
                                  pidfile);
                return r;
        }
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (!S_ISREG(st.st_mode)) {
                log_error("%s is not a regular file: refusing to use it as the pidfile", pidfile);
                return -EINVAL;
        }
        if (st.st_nlink > 1) { /* a hard link to some other file: writing would change that one */
                log_error("%s has %ju hard links: refusing to use it as the pidfile", pidfile, (uintmax_t) st.st_nlink);
                return -EMLINK;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) < 0)
                return errno == EWOULDBLOCK ? -EEXIST : negative_errno();
        if (!(pidfile_path = strdup(pidfile)))
                return -ENOMEM;
        pidfile_fd = TAKE_FD(fd);
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
        char buf[32];
        int n;

        if (pidfile_fd < 0)
                return 0;
        n = snprintf(buf, sizeof(buf), "%d\n", (int) getpid());
        if (ftruncate(pidfile_fd, 0) < 0 || pwrite(pidfile_fd, buf, (size_t) n, 0) != n)
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
        struct stat a, b;

        if (pidfile_fd < 0)
                return;
        /* after dropping root the directory may not let us unlink: leave an empty file then */
        (void) ftruncate(pidfile_fd, 0);
        /* unlink only the file we locked, not whatever now has its name */
        if (fstat(pidfile_fd, &a) == 0 && lstat(pidfile_path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
                (void) unlink(pidfile_path);
        pidfile_fd = safe_close(pidfile_fd);
        pidfile_path = mfree(pidfile_path);
}
