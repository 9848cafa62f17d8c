/* The child, from fork() to the echo loop: signals, file descriptors, process title, sandbox,
 * then worker_echo() and _exit() with its result. Runs in the forked copy of the master. */
#include "echod/child.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;

static void on_sigterm(int sig) {
        stop_requested = 1;
}

_Noreturn void child_main(int fd, SlotShared *slot, const WorkerParams *p, const IpAddr *peer, const Sandbox *sb) {
        struct sigaction sa = { .sa_handler = on_sigterm };
        sigset_t block, during_poll;
        char title[IPADDR_STR_MAX];

        /* dispositions were reset once in main() (all default, SIGPIPE ignored) and the master
         * installs no handler, so only SIGTERM changes: it requests a drain */
        (void) sigaction(SIGTERM, &sa, NULL);
        sigemptyset(&block);
        sigaddset(&block, SIGTERM);
        (void) sigprocmask(SIG_SETMASK, &block, NULL);
        sigemptyset(&during_poll);

        /* the connection becomes fd 3; every other inherited fd above stdio goes */
        if (fd != 3) {
                if (dup3(fd, 3, O_CLOEXEC) < 0)
                        _exit(WORKER_SETUP_FAILED);
                fd = 3;
        }
        /* glibc's closefrom(): close_range(2), falling back to /proc/self/fd where that is refused
         * (old kernels, valgrind) */
        closefrom(4);

        setproctitle("%s", ipaddr_format_endpoint(peer, title));

        if (sandbox_enter(sb) < 0)
                _exit(WORKER_SETUP_FAILED);

        _exit(worker_echo(fd, slot, p, &stop_requested, &during_poll));
}
