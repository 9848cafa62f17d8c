/* Unit tests: admitted connections — each verb, capacity, per-source counts, regrouping, adoption,
 * the records returned, and the invariants checked after each step. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "echod/children.h"
#include "echod/spawn-proto.h"

static Child from(const char *addr, unsigned prefix) {
        Child c = { 0 };
        char buf[64];
        snprintf(buf, sizeof(buf), "%s/%d", addr, strchr(addr, ':') ? 128 : 32);
        assert_int_equal(ipaddr_parse_prefix(buf, &c.peer), 0);
        c.via = c.peer;
        c.source = c.peer;
        ipaddr_mask(&c.source, prefix);
        return c;
}

static void check(const Children *t) {
        const char *what = NULL;
        int r = children_check(t, &what);
        if (r < 0)
                fail_msg("invariant broken: %s", what);
}

static void test_lifecycle(void **state) {
        Children *t;
        ChildRecord rec;
        Child info = from("192.0.2.1", 32);

        assert_int_equal(children_new(&t), 0);
        int slot = children_admit(t, &info, -1, 1000);
        assert_true(slot >= 0);
        check(t);
        assert_int_equal(children_active(t), 1);
        assert_int_equal(children_pending(t), 1);
        assert_int_equal(children_source_count(t, &info.source), 1);
        /* pending: no pid to exit yet */
        assert_int_equal(children_exited(t, 4242, 0, 2000, &rec), -ENOENT);
        assert_int_equal(children_started(t, slot, 4242, 1), 0);
        check(t);
        assert_int_equal(children_pending(t), 0);
        /* started once only, and a pid belongs to one connection */
        assert_int_equal(children_started(t, slot, 4243, 1), -ENOENT);

        /* no socket behind it here: the kernel's counters say nothing */
        uint64_t in, out, idle;
        children_stat(t, slot, &in, &out, &idle);
        assert_int_equal(in, 0);

        assert_int_equal(children_exited(t, 9999, 0, 2000, &rec), -ENOENT);
        assert_int_equal(children_exited(t, 4242, W_EXITCODE(0, 0), 5000, &rec), 0);
        check(t);
        assert_int_equal(rec.pid, 4242);
        assert_string_equal(rec.reason, "clean");
        assert_false(rec.failure);
        assert_int_equal(rec.duration_usec, 4000);
        assert_int_equal(children_active(t), 0);
        assert_int_equal(children_source_count(t, &info.source), 0);
        assert_int_equal(children_counters(t)->accepted, 1);
        assert_int_equal(children_counters(t)->closed, 1);
        assert_int_equal(children_counters(t)->closed_by[WORKER_CLEAN], 1);
        /* 4 ms: counted in the histogram's second bucket (above 1 ms, up to 10 ms) */
        const ChildHistogram *h = &children_counters(t)->duration_usec;
        assert_int_equal(h->count, 1);
        assert_int_equal(h->sum, 4000);
        assert_int_equal(h->counts[0], 0);
        assert_int_equal(h->counts[1], 1);
        assert_int_equal(children_counters(t)->bytes.counts[0], 1); /* 0 bytes */
        /* released once: the second report of the same end finds nothing */
        assert_int_equal(children_exited(t, 4242, 0, 6000, &rec), -ENOENT);

        /* a freed slot is reused first */
        assert_int_equal(children_admit(t, &info, -1, 7000), slot);
        assert_int_equal(children_failed(t, slot, -EAGAIN, 7001, &rec), 0);
        assert_string_equal(rec.reason, "fork-failed");
        assert_true(rec.failure);
        assert_int_equal(children_failed(t, slot, -EAGAIN, 7001, &rec), -ENOENT);
        assert_int_equal(children_counters(t)->accepted, 1);
        assert_int_equal(children_counters(t)->fork_failed, 1);
        assert_int_equal(children_counters(t)->closed, 1); /* no process: not a session */
        assert_int_equal(children_counters(t)->duration_usec.count, 1);
        check(t);
        children_free(t);
}

static void test_killed_is_a_failure(void **state) {
        Children *t;
        ChildRecord rec;
        Child info = from("2001:db8::1", 64);

        assert_int_equal(children_new(&t), 0);
        int slot = children_admit(t, &info, -1, 1);
        assert_int_equal(children_started(t, slot, 77, 1), 0);
        assert_int_equal(children_exited(t, 77, W_EXITCODE(0, SIGKILL), 2, &rec), 0);
        assert_string_equal(rec.reason, "killed-by-SIGKILL");
        assert_true(rec.failure);
        assert_int_equal(children_counters(t)->crashed, 1);
        /* one counter for every signal: a bounded label set */
        assert_int_equal(children_counters(t)->closed_by[CHILD_END_KILLED], 1);
        assert_string_equal(child_end_name(CHILD_END_KILLED), "killed");
        check(t);

        /* an exit code the worker never uses */
        slot = children_admit(t, &info, -1, 3);
        assert_int_equal(children_started(t, slot, 78, 1), 0);
        assert_int_equal(children_exited(t, 78, W_EXITCODE(255, 0), 4, &rec), 0);
        assert_string_equal(rec.reason, "unknown-exit");
        assert_int_equal(children_counters(t)->closed_by[CHILD_END_UNKNOWN], 1);
        assert_string_equal(child_end_name(CHILD_END_UNKNOWN), "unknown-exit");
        assert_int_equal(children_counters(t)->closed, 2);
        check(t);
        children_free(t);
}

static void test_capacity(void **state) {
        Children *t;
        ChildRecord rec;
        Child info = from("198.51.100.7", 32);

        assert_int_equal(children_new(&t), 0);
        for (int i = 0; i < SLOTS_MAX; i++) {
                int slot = children_admit(t, &info, -1, 1);
                assert_true(slot >= 0);
                assert_int_equal(children_started(t, slot, 100000 + i, 1), 0);
        }
        assert_int_equal(children_admit(t, &info, -1, 1), -ENOSPC);
        assert_int_equal(children_active(t), SLOTS_MAX);
        assert_int_equal(children_source_count(t, &info.source), SLOTS_MAX);
        check(t);

        size_t pos = 0, n = 0;
        while (children_next(t, &pos, NULL))
                n++;
        assert_int_equal(n, SLOTS_MAX);
        for (int i = 0; i < SLOTS_MAX; i++)
                assert_int_equal(children_exited(t, 100000 + i, 0, 2, &rec), 0);
        assert_int_equal(children_active(t), 0);
        check(t);
        children_free(t);
}

/* New prefix lengths re-key every admitted connection, those not started yet included. */
static void test_regroup_counts_pending(void **state) {
        Children *t;
        Child a = from("192.0.2.1", 32), b = from("192.0.2.2", 32);
        IpAddr net;

        assert_int_equal(children_new(&t), 0);
        int sa = children_admit(t, &a, -1, 1);
        int sb = children_admit(t, &b, -1, 1);
        assert_int_equal(children_started(t, sa, 10, 1), 0);
        (void) sb; /* still pending: handed over, not forked */
        children_regroup(t, 24, 64);
        check(t);
        assert_int_equal(ipaddr_parse_prefix("192.0.2.0/24", &net), 0);
        assert_int_equal(children_source_count(t, &net), 2);
        children_regroup(t, 32, 64);
        check(t);
        assert_int_equal(children_source_count(t, &a.source), 1);
        assert_int_equal(children_source_count(t, &b.source), 1);
        children_free(t);
}

/* Only the children of the spawner that died are adopted. */
static void test_adopt_by_spawner(void **state) {
        Children *t;
        Child info = from("192.0.2.9", 32);

        assert_int_equal(children_new(&t), 0);
        int s1 = children_admit(t, &info, -1, 1), s2 = children_admit(t, &info, -1, 1), s3 = children_admit(t, &info, -1, 1);
        assert_int_equal(children_started(t, s1, 11, 1), 0);
        assert_int_equal(children_started(t, s2, 12, 2), 0);
        assert_int_equal(children_adopt(t, 1), 1);
        assert_int_equal(children_adopt(t, 1), 0);
        assert_true(children_get_by_pid(t, 11)->adopted);
        assert_false(children_get_by_pid(t, 12)->adopted);
        /* a pending slot's socket, to find the process that holds it */
        assert_int_equal(children_fd(t, s3), -1);
        assert_int_equal(children_fd(t, 999), -ENOENT);
        check(t);
        children_free(t);
}

/* Bytes come from the kernel's counters of the socket the master holds: what the child took off
 * it (not what is still unread, not the peer's FIN, not a PROXY header the master read), and what
 * was sent. The socket is closed when the slot is released. */
static void test_counts_from_kernel(void **state) {
        Children *t;
        ChildRecord rec;
        Child info = from("127.0.0.1", 32);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t alen = sizeof(a);
        char buf[2000];
        uint64_t in, out, idle;

        int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(l >= 0);
        assert_int_equal(bind(l, (struct sockaddr *) &a, sizeof(a)), 0);
        assert_int_equal(listen(l, 1), 0);
        assert_int_equal(getsockname(l, (struct sockaddr *) &a, &alen), 0);
        int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_int_equal(connect(client, (struct sockaddr *) &a, sizeof(a)), 0);
        int server = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        assert_true(server >= 0);
        int child = dup(server); /* the child's copy of the connection */

        /* a 10-byte "header" the master read before admitting it */
        assert_int_equal(send(client, "HEADER....", 10, 0), 10);
        assert_int_equal(recv(server, buf, 10, MSG_WAITALL), 10);
        info.header_len = 10;
        assert_int_equal(children_new(&t), 0);
        int slot = children_admit(t, &info, server, 1);
        assert_true(slot >= 0);
        assert_int_equal(children_started(t, slot, 4242, 1), 0);

        memset(buf, 'x', sizeof(buf));
        assert_int_equal(send(client, buf, 1000, 0), 1000);
        assert_int_equal(recv(child, buf, 600, MSG_WAITALL), 600);
        assert_int_equal(send(child, buf, 500, 0), 500);
        assert_int_equal(shutdown(client, SHUT_WR), 0);
        assert_int_equal(recv(client, buf, 500, MSG_WAITALL), 500);
        children_stat(t, slot, &in, &out, &idle);
        assert_int_equal(in, 600); /* 400 unread, and the FIN, are not counted */
        assert_int_equal(out, 500);
        assert_true(idle < 5000000);

        /* the child takes the rest and the EOF, echoes 100 more, closes, exits cleanly */
        assert_int_equal(recv(child, buf, 400, MSG_WAITALL), 400);
        assert_int_equal(recv(child, buf, 1, 0), 0);
        assert_int_equal(send(child, buf, 100, 0), 100);
        assert_int_equal(shutdown(child, SHUT_WR), 0);
        assert_int_equal(recv(client, buf, 100, MSG_WAITALL), 100);
        assert_int_equal(recv(client, buf, 1, 0), 0);
        close(child);
        assert_int_equal(children_exited(t, 4242, W_EXITCODE(0, 0), 2, &rec), 0);
        assert_int_equal(rec.bytes_in, 1000);
        assert_int_equal(rec.bytes_out, 600);
        assert_int_equal(children_counters(t)->bytes_in, 1000);
        /* 1000 bytes in: the bytes histogram's second bucket (above 64, up to 1024) */
        assert_int_equal(children_counters(t)->bytes.counts[1], 1);
        assert_int_equal(children_counters(t)->bytes.sum, 1000);
        /* released: the master's copy is closed */
        assert_true(fcntl(server, F_GETFD) < 0 && errno == EBADF);
        check(t);
        close(client);
        close(l);
        children_free(t);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_lifecycle),
                cmocka_unit_test(test_killed_is_a_failure),
                cmocka_unit_test(test_capacity),
                cmocka_unit_test(test_regroup_counts_pending),
                cmocka_unit_test(test_adopt_by_spawner),
                cmocka_unit_test(test_counts_from_kernel),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
