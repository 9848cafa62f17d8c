/* Unit tests: the slot table — reserve, commit, release by pid, capacity, shared counters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

#include "echod/children.h"

static void test_lifecycle(void **state) {
        ChildTable *t;
        Child c = { .pid = 4242 }, out;
        uint64_t in, o;

        assert_int_equal(child_table_new(&t), 0);
        int slot = child_table_reserve(t);
        assert_true(slot >= 0);
        assert_int_equal(child_table_commit(t, slot, &c), 0);
        assert_int_equal(child_table_active(t), 1);
        atomic_store(&child_table_shared(t, slot)->bytes_in, 10);
        atomic_store(&child_table_shared(t, slot)->bytes_out, 7);

        assert_int_equal(child_table_release(t, 9999, &out, &in, &o), -ENOENT);
        assert_int_equal(child_table_release(t, 4242, &out, &in, &o), slot);
        assert_int_equal(out.pid, 4242);
        assert_int_equal(in, 10);
        assert_int_equal(o, 7);
        assert_int_equal(child_table_active(t), 0);
        assert_int_equal(child_table_release(t, 4242, &out, &in, &o), -ENOENT);

        /* a freed slot is reused first, with its counters zeroed */
        int again = child_table_reserve(t);
        assert_int_equal(again, slot);
        assert_int_equal(atomic_load(&child_table_shared(t, again)->bytes_in), 0);
        child_table_abort(t, again);
        assert_int_equal(child_table_reserve(t), slot);
        child_table_free(t);
}

static void test_capacity(void **state) {
        ChildTable *t;
        Child out;
        uint64_t in, o;

        assert_int_equal(child_table_new(&t), 0);
        for (int i = 0; i < SLOTS_MAX; i++) {
                int slot = child_table_reserve(t);
                assert_true(slot >= 0);
                Child c = { .pid = 100000 + i };
                assert_int_equal(child_table_commit(t, slot, &c), 0);
        }
        assert_int_equal(child_table_reserve(t), -ENOSPC);
        assert_int_equal(child_table_active(t), SLOTS_MAX);

        size_t pos = 0, n = 0;
        while (child_table_next(t, &pos))
                n++;
        assert_int_equal(n, SLOTS_MAX);

        for (int i = 0; i < SLOTS_MAX; i += 2)
                assert_true(child_table_release(t, 100000 + i, &out, &in, &o) >= 0);
        assert_int_equal(child_table_active(t), SLOTS_MAX / 2);
        for (int i = 1; i < SLOTS_MAX; i += 2) {
                assert_true(child_table_release(t, 100000 + i, &out, &in, &o) >= 0);
                assert_int_equal(out.pid, 100000 + i);
        }
        assert_int_equal(child_table_active(t), 0);
        child_table_free(t);
}

/* The counters a child writes after fork are what the master reads. */
static void test_shared_across_fork(void **state) {
        ChildTable *t;
        Child out;
        uint64_t in, o;
        int status;

        assert_int_equal(child_table_new(&t), 0);
        int slot = child_table_reserve(t);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                SlotShared *s = child_table_shared(t, slot);
                atomic_store(&s->bytes_in, 123456789);
                atomic_store(&s->bytes_out, 123456780);
                _exit(0);
        }
        Child c = { .pid = pid };
        assert_int_equal(child_table_commit(t, slot, &c), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_int_equal(child_table_release(t, pid, &out, &in, &o), slot);
        assert_int_equal(in, 123456789);
        assert_int_equal(o, 123456780);
        child_table_free(t);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_lifecycle),
                cmocka_unit_test(test_capacity),
                cmocka_unit_test(test_shared_across_fork),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
