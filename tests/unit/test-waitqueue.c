/* Unit tests: the wait queue — lanes in arrival order, deadlines, the grace lane's bound, per-source
 * counts (also after regrouping), and that a source held back by its own limit does not hold back
 * the others. Verdicts come from a fake owner with a fixed number of free slots. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "echod/waitqueue.h"

typedef struct Owner {
        unsigned free_slots;
        IpAddr blocked; /* this source is over its own limit */
        int admitted[16], n_admitted;
        int expired[16], n_expired;
        WaitLane expired_lane[16];
} Owner;

static Refusal verdict(void *userdata, const Child *info) {
        Owner *o = userdata;
        if (o->blocked.family && ipaddr_equal(&o->blocked, &info->source))
                return REFUSE_PER_SOURCE;
        return o->free_slots > 0 ? ADMIT_OK : REFUSE_CAPACITY;
}

static void admit(void *userdata, int fd, const Child *info) {
        Owner *o = userdata;
        o->free_slots--;
        o->admitted[o->n_admitted++] = fd;
        close(fd);
}

static void expire(void *userdata, int fd, const Child *info, WaitLane lane, Refusal v) {
        Owner *o = userdata;
        o->expired_lane[o->n_expired] = lane;
        o->expired[o->n_expired++] = fd;
        close(fd);
}

static const WaitCallbacks cb = { .verdict = verdict, .admit = admit, .expire = expire };

static Child from(const char *prefix) {
        Child c = { 0 };
        assert_int_equal(ipaddr_parse_prefix(prefix, &c.peer), 0);
        c.source = c.peer;
        return c;
}

static int fd(void) {
        int r = open("/dev/null", O_RDONLY | O_CLOEXEC);
        assert_true(r >= 0);
        return r;
}

static void check(const WaitQueue *q) {
        const char *what = NULL;
        if (wait_check(q, &what) < 0)
                fail_msg("invariant broken: %s", what);
}

static void test_order_and_deadlines(void **state) {
        Owner o = { 0 };
        WaitQueue *q;
        Child a = from("192.0.2.1/32"), b = from("192.0.2.2/32");
        int f1 = fd(), f2 = fd(), f3 = fd();

        assert_int_equal(wait_queue_new(&cb, &o, &q), 0);
        assert_true(wait_add(q, WAIT_QUEUE, f1, &a, REFUSE_CAPACITY, 100, 10100));
        assert_true(wait_add(q, WAIT_GRACE, f2, &b, REFUSE_CAPACITY, 200, 300));
        assert_true(wait_add(q, WAIT_QUEUE, f3, &a, REFUSE_CAPACITY, 250, 10250));
        check(q);
        assert_int_equal(wait_total(q), 3);
        assert_int_equal(wait_source_count(q, &a.source), 2);
        assert_int_equal(wait_next_deadline(q), 300);

        /* full: nothing admitted, nothing due */
        wait_run(q, 250, true);
        assert_int_equal(o.n_admitted + o.n_expired, 0);
        /* the grace one is due */
        wait_run(q, 300, true);
        assert_int_equal(o.n_expired, 1);
        assert_int_equal(o.expired[0], f2);
        assert_int_equal(o.expired_lane[0], WAIT_GRACE);
        /* one slot: the oldest goes first */
        o.free_slots = 1;
        wait_run(q, 400, true);
        assert_int_equal(o.n_admitted, 1);
        assert_int_equal(o.admitted[0], f1);
        assert_int_equal(wait_total(q), 1);
        check(q);
        /* stopping: nobody admitted, deadlines still kept */
        o.free_slots = 5;
        wait_run(q, 500, false);
        assert_int_equal(o.n_admitted, 1);
        assert_int_equal(wait_expire_lane(q, WAIT_QUEUE), 1);
        assert_int_equal(wait_total(q), 0);
        assert_int_equal(wait_source_count(q, &a.source), 0);
        check(q);
        wait_queue_free(q);
}

static void test_grace_is_bounded(void **state) {
        Owner o = { 0 };
        WaitQueue *q;
        Child a = from("192.0.2.1/32");

        assert_int_equal(wait_queue_new(&cb, &o, &q), 0);
        for (int i = 0; i < WAIT_GRACE_MAX; i++)
                assert_true(wait_add(q, WAIT_GRACE, fd(), &a, REFUSE_CAPACITY, 1, 2));
        int extra = fd();
        assert_false(wait_add(q, WAIT_GRACE, extra, &a, REFUSE_CAPACITY, 1, 2));
        close(extra); /* untouched: still the caller's */
        assert_int_equal(wait_count(q, WAIT_GRACE), WAIT_GRACE_MAX);
        check(q);
        assert_int_equal(wait_drop(q), WAIT_GRACE_MAX);
        assert_int_equal(o.n_expired, 0); /* dropped, not refused */
        check(q);
        wait_queue_free(q);
}

/* One held back by its own source's limit does not hold back the next. */
static void test_blocked_source_does_not_block_others(void **state) {
        Owner o = { .free_slots = 2 };
        WaitQueue *q;
        Child a = from("192.0.2.1/32"), b = from("192.0.2.2/32");
        int fa = fd(), fb = fd();

        o.blocked = a.source;
        assert_int_equal(wait_queue_new(&cb, &o, &q), 0);
        assert_true(wait_add(q, WAIT_GRACE, fa, &a, REFUSE_PER_SOURCE, 1, 1000));
        assert_true(wait_add(q, WAIT_GRACE, fb, &b, REFUSE_CAPACITY, 2, 1000));
        wait_run(q, 10, true);
        assert_int_equal(o.n_admitted, 1);
        assert_int_equal(o.admitted[0], fb);
        assert_int_equal(wait_total(q), 1);
        wait_run(q, 1000, true);
        assert_int_equal(o.n_expired, 1);
        assert_int_equal(o.expired[0], fa);
        wait_queue_free(q);
}

static void test_regroup(void **state) {
        Owner o = { 0 };
        WaitQueue *q;
        Child a = from("192.0.2.1/32"), b = from("192.0.2.2/32");
        IpAddr net;

        assert_int_equal(wait_queue_new(&cb, &o, &q), 0);
        assert_true(wait_add(q, WAIT_QUEUE, fd(), &a, REFUSE_CAPACITY, 1, 1000));
        assert_true(wait_add(q, WAIT_GRACE, fd(), &b, REFUSE_CAPACITY, 1, 1000));
        wait_regroup(q, 24, 64);
        check(q);
        assert_int_equal(ipaddr_parse_prefix("192.0.2.0/24", &net), 0);
        assert_int_equal(wait_source_count(q, &net), 2);
        assert_int_equal(wait_source_count(q, &a.source), 0);
        wait_queue_free(q);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_order_and_deadlines),
                cmocka_unit_test(test_grace_is_bounded),
                cmocka_unit_test(test_blocked_source_does_not_block_others),
                cmocka_unit_test(test_regroup),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
