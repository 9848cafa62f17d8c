/* Unit tests: which of our children holds a socket, read from /proc — the one a dead spawner's
 * lost hand-off is settled by. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "echod/orphans.h"

static pid_t skipped;

static bool skip_one(void *userdata, pid_t pid) {
        return pid == skipped;
}

/* A child that keeps `keep` open (at whatever number fork gave it, as a spawner's child does
 * before it moves the connection to fd 3) until we close `release`. */
static pid_t holder(int keep, int release_read, int release_write) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                char c;
                close(release_write);
                (void) keep;
                (void) read(release_read, &c, 1);
                _exit(0);
        }
        return pid;
}

static void test_find_holder(void **state) {
        int held[2], other[2], release[2];

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, held), 0);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, other), 0);
        assert_int_equal(pipe(release), 0);
        pid_t a = holder(held[1], release[0], release[1]);

        /* the child holds held[1] (and other[*], release[*] too: it is a copy of us) */
        assert_int_equal(orphans_find_holder(held[1], NULL, NULL), a);
        /* a child the caller knows already is not looked at */
        skipped = a;
        assert_int_equal(orphans_find_holder(held[1], skip_one, NULL), -ESRCH);
        /* a socket created after the fork is nobody's */
        int late[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, late), 0);
        assert_int_equal(orphans_find_holder(late[0], NULL, NULL), -ESRCH);
        assert_int_equal(orphans_find_holder(-1, NULL, NULL), -EBADF);

        /* once it has exited (a zombie, not reaped yet), it holds nothing */
        close(release[1]);
        siginfo_t si;
        assert_int_equal(waitid(P_PID, (id_t) a, &si, WEXITED | WNOWAIT), 0);
        assert_int_equal(orphans_find_holder(held[1], NULL, NULL), -ESRCH);
        assert_int_equal(waitpid(a, NULL, 0), a);
        close(release[0]);
        close(late[0]);
        close(late[1]);
        close(held[0]);
        close(held[1]);
        close(other[0]);
        close(other[1]);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_find_holder),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
