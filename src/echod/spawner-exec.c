/* echod-spawner as a program the kernel runs: where its binary is (located next to echod, pinned
 * by an fd while echod may still be root), how one process of it is executed (posix_spawn: its
 * socket as fd 3, stdio on /dev/null, the signal mask it must start with, a process group of its
 * own, room in its arguments for the children's titles), and whether the kernel shows one stopped.
 * Knows no Spawner: spawner.c decides when a process starts and what it is for, and calls in here
 * (spawner-internal.h); spawner_locate(), spawner_path() and spawner_pin() are in spawner.h. */
#include "echod/spawner.h"
#include "echod/spawner-internal.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "build-config.h"
#include "echod/spawn-proto.h"
#include "shared/macro.h"

/* argument area the children's titles are written over: "echod: " and the longest endpoint */
#define TITLE_PAD 56
_Static_assert(sizeof("echod: spawner") + TITLE_PAD > SPAWN_TITLE_MAX, "a child's title must fit the spawner's arguments");

static char path[PATH_MAX];
static int pinned = -1; /* spawner_pin(): the binary, opened while we may still be root */

static bool try_dir(const char *dir, size_t len) {
        if (len + sizeof("/echod-spawner") > sizeof(path))
                return false;
        snprintf(path, sizeof(path), "%.*s/echod-spawner", (int) len, dir);
        return access(path, X_OK) == 0;
}

void spawner_locate(const char *argv0) {
        char buf[PATH_MAX];
        const char *slash = argv0 ? strrchr(argv0, '/') : NULL;

        /* next to the command as it was started (a build tree, or a test's copy of it), made
         * absolute now: a daemon moves to / before it starts the spawner */
        if (slash) {
                if (argv0[0] == '/') {
                        if (try_dir(argv0, (size_t) (slash - argv0)))
                                return;
                } else if (getcwd(buf, sizeof(buf)) && strlen(buf) + 1 + (size_t) (slash - argv0) < sizeof(buf)) {
                        size_t n = strlen(buf);
                        snprintf(buf + n, sizeof(buf) - n, "/%.*s", (int) (slash - argv0), argv0);
                        if (try_dir(buf, strlen(buf)))
                                return;
                }
        }
        /* next to this very executable, however it was named */
        ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
        if (n > 0) {
                buf[n] = 0;
                slash = strrchr(buf, '/');
                if (slash && try_dir(buf, (size_t) (slash - buf)))
                        return;
        }
        snprintf(path, sizeof(path), "%s", ECHOD_SPAWNER_PATH);
}

const char *spawner_path(void) {
        if (!path[0])
                spawner_locate(NULL);
        return path;
}

int spawner_pin(void) {
        int fd = open(spawner_path(), O_PATH | O_CLOEXEC);

        if (fd < 0)
                return negative_errno();
        safe_close(pinned);
        pinned = fd;
        return 0;
}

void spawner_unpin(void) {
        pinned = safe_close(pinned);
}

int spawner_exec(int fd, pid_t *ret_pid) {
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        char *argv[2 + TITLE_PAD] = { (char *) "echod: spawner" };
        char *envp[] = { NULL };
        sigset_t blocked;
        int r;

        for (int i = 1; i <= TITLE_PAD; i++)
                argv[i] = (char *) "";
        /* blocked from its first instruction, not from when its main() gets there: a stop's
         * SIGTERM to its group (spawner_signal()) must never find it with the default action
         * (the same set spawner-main.c keeps; each child unblocks SIGTERM for its drain) */
        sigemptyset(&blocked);
        for (size_t i = 0; i < ELEMENTSOF(spawner_blocked_signals); i++)
                sigaddset(&blocked, spawner_blocked_signals[i]);
        posix_spawn_file_actions_init(&fa);
        posix_spawnattr_init(&attr);
        posix_spawn_file_actions_adddup2(&fa, fd, SPAWN_FD_SOCKET);
        /* nothing of ours but its socket: no journal stream, no terminal (a sanitizer build keeps
         * stderr, where the sanitizers report) */
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDWR, 0);
        posix_spawn_file_actions_adddup2(&fa, STDIN_FILENO, STDOUT_FILENO);
#if !defined(__SANITIZE_ADDRESS__)
        posix_spawn_file_actions_adddup2(&fa, STDIN_FILENO, STDERR_FILENO);
#endif
        posix_spawnattr_setsigmask(&attr, &blocked);
        /* a process group of its own, which its children join: spawner_signal() */
        posix_spawnattr_setpgroup(&attr, 0);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);
        /* by its path if we may still reach it, else through the pinned fd: then the file's own
         * mode is all that is checked (the path is kept where it works: tools that follow an
         * exec, valgrind among them, cannot follow /proc/self/fd/N) */
        char via_fd[sizeof("/proc/self/fd/") + 12];
        const char *exe = spawner_path();
        if (pinned >= 0 && access(exe, X_OK) < 0) {
                snprintf(via_fd, sizeof(via_fd), "/proc/self/fd/%d", pinned);
                exe = via_fd;
        }
        r = -posix_spawn(ret_pid, exe, &fa, &attr, argv, envp);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
        return r;
}

/* The kernel's word on a process: stopped (SIGSTOP, or a tracer's stop)? */
bool spawner_proc_stopped(pid_t pid) {
        char stat_path[64], buf[512];
        _cleanup_(closep) int fd = -1;
        ssize_t n;

        snprintf(stat_path, sizeof(stat_path), "/proc/%d/stat", (int) pid);
        fd = open(stat_path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || (n = read(fd, buf, sizeof(buf) - 1)) <= 0)
                return false;
        buf[n] = 0;
        const char *paren = strrchr(buf, ')');
        return paren && paren[1] == ' ' && (paren[2] == 'T' || paren[2] == 't');
}
