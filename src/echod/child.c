/* The child, from fork() to the echo loop: file descriptors, process title, sandbox, then
 * worker_echo() and _exit() with its result. It runs in a forked copy of echod-spawner: what can
 * be done once (capabilities, oom_score_adj, signal handling) was done there, before any fork.
 * Most children are forked as spares, ahead of their connection (spawner-main.c), and wait for it
 * sandboxed already: child_spare_main(). One forked for a connection at hand runs child_main().
 *
 * Sandbox: the spawner loads the seccomp filter the master compiled (sandbox.c) into itself, once,
 * with no_new_privs and the fd and core limits; every child inherits all of it for free. Loading
 * a filter costs a BPF compilation (JIT) in the kernel: 30-70 us per process on this machine,
 * more than the rest of a short connection (bench/FINDINGS.md). Each child only sets
 * RLIMIT_NPROC to 0, so the fork() the filter must allow the spawner is useless to it: the kernel
 * holds every uid but root to that limit, and the master never runs children as root (main.c).
 *
 * What a child has: its connection as fd 3, /dev/null as stdin, stdout and stderr, a copy of the
 * spawner's private memory, nothing shared with any other process. */
#include "echod/child.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "echod/udp-proto.h"
#include "shared/io.h"
#include "shared/macro.h"

/* How far above the master a child's oom_score_adj goes: the kernel kills a child first. */
#define CHILD_OOM_BONUS 500
/* stdio, the connection, the spawner's few, and slack */
#define CHILD_NOFILE 16

static void on_sigterm(int sig) {
        worker_request_stop();
}

static int raise_oom_score_adj(int bonus) {
        _cleanup_(closep) int fd = open("/proc/self/oom_score_adj", O_RDWR | O_CLOEXEC);
        char buf[16] = { 0 };

        if (fd < 0)
                return negative_errno();
        if (read_full(fd, buf, sizeof(buf) - 1) <= 0)
                return -EIO;
        snprintf(buf, sizeof(buf), "%d", MIN(atoi(buf) + bonus, 1000));
        if (lseek(fd, 0, SEEK_SET) < 0 || write_full(fd, buf, strlen(buf)) < 0)
                return negative_errno();
        return 0;
}

int child_prepare_once(void) {
        struct sigaction sa = { .sa_handler = on_sigterm };
        struct __user_cap_header_struct head = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3] = { { 0, 0, 0 } };

        /* whatever the master holds (CAP_NET_BIND_SERVICE from the unit), the spawner and its
         * children need none: empty the ambient, inheritable, permitted and effective sets */
        (void) prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        if (syscall(SYS_capset, &head, none) < 0)
                return negative_errno();
        /* a failure here is not fatal: the children are merely not preferred by the OOM killer */
        (void) raise_oom_score_adj(CHILD_OOM_BONUS);
        if (sigaction(SIGTERM, &sa, NULL) < 0)
                return negative_errno();
        return 0;
}

int sandbox_enter_spawner(const SpawnSandbox *s) {
        static const struct {
                int resource;
                rlim_t limit;
        } limits[] = {
                { RLIMIT_NOFILE, CHILD_NOFILE },
                { RLIMIT_CORE, 0 }, /* no core file with peer data in it */
        };
        struct sock_fprog prog = { .len = (unsigned short) s->filter_len, .filter = (struct sock_filter *) s->filter };

        if (!s->enabled)
                return 0; /* sandbox = false: debugging with gdb, strace or valgrind */
        /* a limit that cannot be set is a sandbox that is not there: fail closed */
        for (size_t i = 0; i < ELEMENTSOF(limits); i++) {
                struct rlimit rl = { limits[i].limit, limits[i].limit };
                if (setrlimit(limits[i].resource, &rl) < 0)
                        return negative_errno();
        }
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
                return negative_errno();
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
                return negative_errno();
        return 0;
}

/* What is left for each child: no forks (the spawner itself must fork). */
static int sandbox_enter_child(const SpawnSandbox *s) {
        struct rlimit none = { 0, 0 };

        if (!s->enabled)
                return 0;
        return setrlimit(RLIMIT_NPROC, &none) < 0 ? negative_errno() : 0;
}

/* ps shows the peer: the title replaces the spawner's own ("echod: spawner"), whose argument area
 * is longer and NUL after it. Titles come zero-padded to their full size, so one fixed-size copy
 * (inlined: no call into libc's memcpy, a page of text this child would fault in) writes it and
 * clears the rest of the spawner's. */
static void set_title(const char title[static SPAWN_TITLE_MAX], char *title_area, size_t title_size) {
        if (title_size > SPAWN_TITLE_MAX) {
                memcpy(title_area, title, SPAWN_TITLE_MAX);
                title_area[SPAWN_TITLE_MAX - 1] = 0;
        }
}

/* From a connection's fd to its end; the sandbox is entered already. */
static _Noreturn void child_run(int fd, const SpawnConnection *req, char *title_area, size_t title_size) {
        const uint64_t term = UINT64_C(1) << (SIGTERM - 1); /* the kernel's sigset_t */

        /* the connection becomes fd 3 (over the spawner's socket); every other fd above stdio goes */
        if (fd != 3) {
                if (dup3(fd, 3, O_CLOEXEC) < 0)
                        _exit(WORKER_SETUP_FAILED);
                fd = 3;
        }
        /* glibc's closefrom(): close_range(2), falling back to /proc/self/fd where that is refused
         * (old kernels, valgrind) */
        closefrom(4);
        set_title(req->title, title_area, title_size);

        /* a UDP worker keeps SIGTERM blocked: the end of its control channel stops it */
        if (req->kind == SPAWN_KIND_DATAGRAM)
                _exit(udp_worker_main(fd));

        /* SIGTERM (a drain), blocked in the spawner, is let in: one sent already arrives now, and
         * the worker looks at it before any wait. The system call itself, with the kernel's
         * sigset: libc's sigprocmask() and sigaddset() sit on a page of text of their own, which
         * this child would fault in for them alone (the process is single-threaded, so libc's
         * wrapper has nothing to add). */
        if (syscall(SYS_rt_sigprocmask, SIG_UNBLOCK, &term, NULL, sizeof(term)) < 0)
                _exit(WORKER_SETUP_FAILED);
        _exit(worker_echo(fd, &req->params));
}

_Noreturn void child_main(int fd, const SpawnConnection *req, const SpawnSandbox *sb, char *title_area,
                          size_t title_size) {
        if (sandbox_enter_child(sb) < 0)
                _exit(WORKER_SETUP_FAILED);
        child_run(fd, req, title_area, title_size);
}

_Noreturn void child_spare_main(int chan, const SpawnSandbox *sb, char *title_area, size_t title_size) {
        static const char spare_title[SPAWN_TITLE_MAX] = "echod: spare";
        SpawnConnection req;
        ssize_t n;
        int fd;

        /* nothing of the spawner's but stdio and the receiving end of the spare channel: not its
         * socket to the master, not its signalfd, not the channel's sending end (with that, a
         * process could hand the next spare a connection of its own choosing) */
        if (close_range(3, (unsigned) chan - 1, 0) < 0 || close_range((unsigned) chan + 1, ~0U, 0) < 0)
                _exit(WORKER_SETUP_FAILED);
        set_title(spare_title, title_area, title_size);
        if (sandbox_enter_child(sb) < 0)
                _exit(WORKER_SETUP_FAILED);

        /* SIGTERM stays blocked while it waits: a drain's reaches it once it has a connection */
        do
                n = recv_with_fd(chan, &req, sizeof(req), 0, &fd);
        while (n == -EINTR);
        if (n == 0)
                _exit(WORKER_CLEAN); /* the spawner is gone: no connection will come */
        if (n != (ssize_t) sizeof(req) || fd < 0)
                _exit(WORKER_SETUP_FAILED);

        /* taken: the spawner may fork the next spare. Then the channel goes, before a byte of the
         * peer's is read: this process never receives a second connection. An answer that finds no
         * spawner (it was killed since the hand-off; a retiring one waits for it) ends this process
         * unserved: whether the master was told of it before the spawner died, or found it holding
         * the connection, it cannot know, and a connection the master does not count must get no
         * process. The master records either end. */
        pid_t me = getpid();
        if (send(chan, &me, sizeof(me), MSG_NOSIGNAL) < 0 || close(chan) < 0)
                _exit(WORKER_SETUP_FAILED);
        child_run(fd, &req, title_area, title_size);
}
