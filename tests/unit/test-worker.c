/* Unit tests: the worker's echo loop over a socketpair — large binary data, half-close, idle
 * timeout, peer reset, drain on stop. The worker runs in a forked child, as in echod. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "echod/worker.h"
#include "shared/io.h"
#include "shared/timeutil.h"

static void on_term(int sig) {
        worker_request_stop();
}

/* Fork a worker on one end of a socketpair (created with extra_flags, e.g. SOCK_NONBLOCK, for
 * the worker's end); returns our end, blocking. */
static int spawn_worker_flags(unsigned idle, int extra_flags, pid_t *ret_pid) {
        int sv[2];

        struct sigaction sa = { .sa_handler = on_term }, old;

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | extra_flags, 0, sv), 0);
        assert_int_equal(fd_set_nonblock(sv[0], 0), 0);
        /* installed before the fork, as in echod (the spawner's, inherited): a SIGTERM sent at
         * once is never the default action */
        sigaction(SIGTERM, &sa, &old);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                WorkerParams p = { .idle_timeout = idle };
                close(sv[0]);
                _exit(worker_echo(sv[1], &p));
        }
        sigaction(SIGTERM, &old, NULL);
        close(sv[1]);
        *ret_pid = pid;
        return sv[0];
}

static int spawn_worker(unsigned idle, pid_t *ret_pid) {
        return spawn_worker_flags(idle, 0, ret_pid);
}

static int wait_exit(pid_t pid) {
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        return WEXITSTATUS(status);
}

static void test_echo_half_close(void **state) {
        const size_t len = 8 * 1024 * 1024;
        uint8_t *data = malloc(len), *back = malloc(len);
        pid_t pid, writer;
        int fd = spawn_worker(0, &pid);

        arc4random_buf(data, len);
        /* write and read concurrently: a writer process, the reader here */
        writer = fork();
        if (writer == 0) {
                _exit(write_full(fd, data, len) == 0 && shutdown(fd, SHUT_WR) == 0 ? 0 : 1);
        }
        assert_int_equal(read_full(fd, back, len), (ssize_t) len);
        assert_memory_equal(data, back, len);
        /* after the echo: a clean EOF, not a reset */
        char extra;
        assert_int_equal(read(fd, &extra, 1), 0);
        assert_int_equal(wait_exit(writer), 0);
        assert_int_equal(wait_exit(pid), WORKER_CLEAN);
        close(fd);
        free(data);
        free(back);
}

static void test_zero_bytes(void **state) {
        pid_t pid;
        int fd = spawn_worker(0, &pid);
        char c;

        assert_int_equal(shutdown(fd, SHUT_WR), 0);
        assert_int_equal(read(fd, &c, 1), 0);
        assert_int_equal(wait_exit(pid), WORKER_CLEAN);
        close(fd);
}

static void test_idle_timeout(void **state) {
        pid_t pid;
        int fd = spawn_worker(1, &pid);
        uint64_t t0 = now_usec();
        char buf[8];

        assert_int_equal(write_full(fd, "ping", 4), 0);
        assert_int_equal(read_full(fd, buf, 4), 4);
        assert_memory_equal(buf, "ping", 4);
        /* nothing more: the worker gives up after ~1 s */
        assert_int_equal(wait_exit(pid), WORKER_IDLE_TIMEOUT);
        uint64_t took = now_usec() - t0;
        assert_true(took >= 900 * USEC_PER_MSEC);
        assert_true(took < 3 * USEC_PER_SEC);
        close(fd);
}

/* echod hands the worker a blocking socket; one that is not must still be waited on, not spun
 * on: an idle second costs the worker almost no CPU time either way. */
static void test_nonblocking_socket_sleeps(void **state) {
        pid_t pid;
        int fd = spawn_worker_flags(1, SOCK_NONBLOCK, &pid), status;
        struct rusage ru;
        char buf[8];

        assert_int_equal(write_full(fd, "ping", 4), 0);
        assert_int_equal(read_full(fd, buf, 4), 4);
        assert_memory_equal(buf, "ping", 4);
        assert_int_equal(wait4(pid, &status, 0, &ru), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), WORKER_IDLE_TIMEOUT);
        uint64_t cpu = (uint64_t) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * USEC_PER_SEC +
                       (uint64_t) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
        assert_true(cpu < 200 * USEC_PER_MSEC); /* spinning would be the whole second */
        close(fd);
}

static void test_stop_drains(void **state) {
        pid_t pid;
        int fd = spawn_worker(0, &pid);
        char buf[16];

        assert_int_equal(write_full(fd, "pending", 7), 0);
        assert_int_equal(read_full(fd, buf, 7), 7);
        kill(pid, SIGTERM);
        /* the worker sends FIN; we see EOF, then close our side */
        assert_int_equal(read(fd, buf, sizeof(buf)), 0);
        shutdown(fd, SHUT_WR);
        assert_int_equal(wait_exit(pid), WORKER_DRAINED);
        close(fd);
}

/* A stop does not cut off what the client sends right after it (it was on the wire): the worker
 * reads on until the client is quiet, echoes it, then sends its FIN. Before, the FIN came at once
 * and the late bytes were lost. */
static void test_stop_reads_what_is_in_flight(void **state) {
        pid_t pid;
        int fd = spawn_worker(0, &pid);
        struct pollfd p = { .fd = fd, .events = POLLIN };
        char buf[16];

        assert_int_equal(write_full(fd, "first", 5), 0);
        assert_int_equal(read_full(fd, buf, 5), 5);
        kill(pid, SIGTERM);
        /* no FIN yet: the worker waits for the client to be quiet (DRAIN_QUIET_MIN_USEC, 100 ms) */
        assert_int_equal(poll(&p, 1, 30), 0);
        assert_int_equal(write_full(fd, "late", 4), 0);
        assert_int_equal(read_full(fd, buf, 4), 4);
        assert_memory_equal(buf, "late", 4);
        assert_int_equal(poll(&p, 1, 2000), 1); /* then its FIN */
        assert_int_equal(read(fd, buf, sizeof(buf)), 0);
        shutdown(fd, SHUT_WR);
        assert_int_equal(wait_exit(pid), WORKER_DRAINED);
        close(fd);
}

/* A client that never pauses is cut DRAIN_MAX_USEC (1 s) after the stop: echo, FIN. */
static void test_stop_ends_a_stream(void **state) {
        pid_t pid, writer;
        int fd = spawn_worker(0, &pid);
        static char buf[65536];
        uint64_t t0;

        writer = fork();
        assert_true(writer >= 0);
        if (writer == 0) {
                for (;;)
                        if (write(fd, buf, 4096) < 0)
                                _exit(0);
        }
        assert_true(read(fd, buf, sizeof(buf)) > 0);
        kill(pid, SIGTERM);
        t0 = clock_usec(CLOCK_MONOTONIC);
        for (;;) {
                ssize_t n = read(fd, buf, sizeof(buf));
                assert_true(n >= 0);
                if (n == 0)
                        break;
                assert_true(clock_usec(CLOCK_MONOTONIC) - t0 < 5 * USEC_PER_SEC);
        }
        kill(writer, SIGKILL);
        waitpid(writer, NULL, 0);
        shutdown(fd, SHUT_WR);
        assert_int_equal(wait_exit(pid), WORKER_DRAINED);
        close(fd);
}

/* SIGTERM at any moment of the worker's start or wait (before, during or after it arms its
 * receive timeout) ends it promptly as a drain: no window where it sleeps through it. */
static void test_stop_at_any_moment(void **state) {
        for (int i = 0; i < 200; i++) {
                pid_t pid;
                int fd = spawn_worker(0, &pid);
                struct pollfd p = { .fd = fd, .events = POLLIN };
                char buf[16];

                if (i % 2)
                        usleep((useconds_t) (i * 5)); /* spread over the worker's setup and its first recv() */
                kill(pid, SIGTERM);
                assert_int_equal(poll(&p, 1, 2000), 1); /* its FIN, within 2 s */
                assert_int_equal(read(fd, buf, sizeof(buf)), 0);
                shutdown(fd, SHUT_WR);
                assert_int_equal(wait_exit(pid), WORKER_DRAINED);
                close(fd);
        }
}

static void test_peer_gone(void **state) {
        pid_t pid;
        int fd = spawn_worker(0, &pid);
        char big[65536] = { 0 };

        /* the peer writes and vanishes without reading: the worker's write fails (EPIPE) */
        assert_int_equal(write_full(fd, big, sizeof(big)), 0);
        close(fd);
        int code = wait_exit(pid);
        assert_true(code == WORKER_PEER_RESET || code == WORKER_CLEAN);
}

static void test_exit_reasons(void **state) {
        assert_string_equal(worker_exit_reason(WORKER_CLEAN), "clean");
        assert_string_equal(worker_exit_reason(WORKER_IDLE_TIMEOUT), "idle-timeout");
        assert_string_equal(worker_exit_reason(WORKER_DRAINED), "drained");
        assert_string_equal(worker_exit_reason(77), "unknown-exit");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_echo_half_close), cmocka_unit_test(test_zero_bytes),
                cmocka_unit_test(test_idle_timeout),    cmocka_unit_test(test_nonblocking_socket_sleeps),
                cmocka_unit_test(test_stop_drains),
                cmocka_unit_test(test_stop_at_any_moment),
                cmocka_unit_test(test_stop_reads_what_is_in_flight),
                cmocka_unit_test(test_stop_ends_a_stream),
                cmocka_unit_test(test_peer_gone),
                cmocka_unit_test(test_exit_reasons),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
