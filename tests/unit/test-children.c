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
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "echod/children.h"

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
        int slot = children_admit(t, &info, 1000);
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

        /* the child's counters, bounded: it cannot claim to have sent more than it got */
        uint64_t in, out, last;
        children_slot_counters(t, slot, &in, &out, &last);
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
        /* released once: the second report of the same end finds nothing */
        assert_int_equal(children_exited(t, 4242, 0, 6000, &rec), -ENOENT);

        /* a freed slot is reused first */
        assert_int_equal(children_admit(t, &info, 7000), slot);
        assert_int_equal(children_failed(t, slot, -EAGAIN, 7001, &rec), 0);
        assert_string_equal(rec.reason, "fork-failed");
        assert_true(rec.failure);
        assert_int_equal(children_failed(t, slot, -EAGAIN, 7001, &rec), -ENOENT);
        assert_int_equal(children_counters(t)->accepted, 1);
        assert_int_equal(children_counters(t)->fork_failed, 1);
        check(t);
        children_free(t);
}

static void test_killed_is_a_failure(void **state) {
        Children *t;
        ChildRecord rec;
        Child info = from("2001:db8::1", 64);

        assert_int_equal(children_new(&t), 0);
        int slot = children_admit(t, &info, 1);
        assert_int_equal(children_started(t, slot, 77, 1), 0);
        assert_int_equal(children_exited(t, 77, W_EXITCODE(0, SIGKILL), 2, &rec), 0);
        assert_string_equal(rec.reason, "killed-by-SIGKILL");
        assert_true(rec.failure);
        assert_int_equal(children_counters(t)->crashed, 1);
        check(t);
        children_free(t);
}

static void test_capacity(void **state) {
        Children *t;
        ChildRecord rec;
        Child info = from("198.51.100.7", 32);

        assert_int_equal(children_new(&t), 0);
        for (int i = 0; i < SLOTS_MAX; i++) {
                int slot = children_admit(t, &info, 1);
                assert_true(slot >= 0);
                assert_int_equal(children_started(t, slot, 100000 + i, 1), 0);
        }
        assert_int_equal(children_admit(t, &info, 1), -ENOSPC);
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
        int sa = children_admit(t, &a, 1);
        int sb = children_admit(t, &b, 1);
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
        int s1 = children_admit(t, &info, 1), s2 = children_admit(t, &info, 1), s3 = children_admit(t, &info, 1);
        assert_int_equal(children_started(t, s1, 11, 1), 0);
        assert_int_equal(children_started(t, s2, 12, 2), 0);
        assert_int_equal(children_adopt(t, 1), 1);
        assert_int_equal(children_adopt(t, 1), 0);
        assert_true(children_get_by_pid(t, 11)->adopted);
        assert_false(children_get_by_pid(t, 12)->adopted);
        /* a pending slot's pid hint: none until the spawner writes one */
        assert_int_equal(children_pending_pid(t, s3), -ENOENT);
        assert_int_equal(children_pending_pid(t, s1), -ENOENT);
        check(t);
        children_free(t);
}

/* The counters a child writes after fork are what the master reads; what it claims to have sent
 * beyond what it received is not believed. */
static void test_shared_across_fork(void **state) {
        Children *t;
        ChildRecord rec;
        Child info = from("192.0.2.3", 32);
        int status;

        assert_int_equal(children_new(&t), 0);
        int slot = children_admit(t, &info, 1);
        SlotShared *shared = mmap(NULL, sizeof(SlotShared) * SLOTS_MAX, PROT_READ | PROT_WRITE, MAP_SHARED,
                                  children_memfd(t), 0);
        assert_true(shared != MAP_FAILED);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                atomic_store(&shared[slot].bytes_in, 123456789);
                atomic_store(&shared[slot].bytes_out, 999999999);
                _exit(0);
        }
        assert_int_equal(children_started(t, slot, pid, 1), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_int_equal(children_exited(t, pid, status, 2, &rec), 0);
        assert_int_equal(rec.bytes_in, 123456789);
        assert_int_equal(rec.bytes_out, 123456789);
        munmap(shared, sizeof(SlotShared) * SLOTS_MAX);
        children_free(t);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_lifecycle),
                cmocka_unit_test(test_killed_is_a_failure),
                cmocka_unit_test(test_capacity),
                cmocka_unit_test(test_regroup_counts_pending),
                cmocka_unit_test(test_adopt_by_spawner),
                cmocka_unit_test(test_shared_across_fork),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
