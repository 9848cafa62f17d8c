/* Unit tests: token buckets and the bounded per-source table, on an injected clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "echod/config.h"
#include "echod/ratelimit.h"
#include "shared/timeutil.h"

#define T0 (1000 * USEC_PER_SEC)

static void test_burst_then_rate(void **state) {
        TokenBucket b = { 0 };
        unsigned ok = 0;

        /* 10/s with a burst of 5: 5 at once, then one per 100 ms */
        for (int i = 0; i < 20; i++)
                ok += token_bucket_take(&b, 10, 5, T0);
        assert_int_equal(ok, 5);
        assert_false(token_bucket_take(&b, 10, 5, T0 + 99 * USEC_PER_MSEC));
        assert_true(token_bucket_take(&b, 10, 5, T0 + 100 * USEC_PER_MSEC));
        assert_false(token_bucket_take(&b, 10, 5, T0 + 150 * USEC_PER_MSEC));

        /* recovery: after a quiet second the full burst is back, and no more */
        ok = 0;
        for (int i = 0; i < 20; i++)
                ok += token_bucket_take(&b, 10, 5, T0 + 2 * USEC_PER_SEC);
        assert_int_equal(ok, 5);
}

static void test_steady_rate_over_time(void **state) {
        TokenBucket b = { 0 };
        unsigned ok = 0;

        /* offered 10x the rate for 10 s: admitted ~ burst + rate * 10 */
        for (uint64_t t = 0; t < 10 * USEC_PER_SEC; t += USEC_PER_SEC / 200)
                ok += token_bucket_take(&b, 20, 20, T0 + t);
        assert_true(ok >= 20 + 199 && ok <= 20 + 201);
}

static void test_fractional_rate(void **state) {
        TokenBucket b = { 0 };

        assert_true(token_bucket_take(&b, 0.5, 1, T0));
        assert_false(token_bucket_take(&b, 0.5, 1, T0 + USEC_PER_SEC));
        assert_true(token_bucket_take(&b, 0.5, 1, T0 + 2 * USEC_PER_SEC));
        assert_true(token_bucket_full(&b, 0.5, 1, T0 + 4 * USEC_PER_SEC));
}

static void test_clock_going_backwards_is_harmless(void **state) {
        TokenBucket b = { 0 };

        assert_true(token_bucket_take(&b, 1, 1, T0));
        assert_false(token_bucket_take(&b, 1, 1, T0 - USEC_PER_SEC));
        assert_true(token_bucket_take(&b, 1, 1, T0 + USEC_PER_SEC));
}

static void test_default_burst(void **state) {
        assert_int_equal(config_burst(10, 0), 10);
        assert_int_equal(config_burst(0.5, 0), 1);
        assert_int_equal(config_burst(2.1, 0), 3);
        assert_int_equal(config_burst(2.1, 7), 7);
}

static IpAddr source(uint32_t i) {
        IpAddr a = { .family = AF_INET, .prefixlen = 32 };
        memcpy(a.bytes, &i, 4);
        return a;
}

static void test_per_source_table(void **state) {
        RateTable *t;
        IpAddr a = source(1), b = source(2);

        assert_int_equal(rate_table_new(8, &t), 0);
        assert_true(rate_table_take(t, &a, 1, 2, T0));
        assert_true(rate_table_take(t, &a, 1, 2, T0));
        assert_false(rate_table_take(t, &a, 1, 2, T0)); /* a's burst is spent */
        assert_true(rate_table_take(t, &b, 1, 2, T0));  /* b has its own bucket */
        assert_true(rate_table_take(t, &a, 1, 2, T0 + USEC_PER_SEC));
        rate_table_free(t);
}

static void test_table_bounded(void **state) {
        RateTable *t;

        assert_int_equal(rate_table_new(100, &t), 0);
        /* an address-rotation flood: 1000 sources, each mid-burst */
        for (uint32_t i = 0; i < 1000; i++) {
                IpAddr s = source(i);
                assert_true(rate_table_take(t, &s, 1, 5, T0));
        }
        assert_int_equal(rate_table_size(t), 100);   /* never more than the bound */
        assert_int_equal(rate_table_overflows(t), 900); /* the rest passed unlimited */
        /* once the buckets refill, they are dropped and new sources are tracked again */
        IpAddr fresh = source(5000);
        for (int i = 0; i < 5; i++)
                assert_true(rate_table_take(t, &fresh, 1, 5, T0 + 10 * USEC_PER_SEC));
        assert_false(rate_table_take(t, &fresh, 1, 5, T0 + 10 * USEC_PER_SEC));
        assert_int_equal(rate_table_size(t), 1);
        assert_int_equal(rate_table_sweep(t, 1, 5, T0 + 20 * USEC_PER_SEC), 0);
        rate_table_free(t);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_burst_then_rate),     cmocka_unit_test(test_steady_rate_over_time),
                cmocka_unit_test(test_fractional_rate),     cmocka_unit_test(test_clock_going_backwards_is_harmless),
                cmocka_unit_test(test_default_burst),       cmocka_unit_test(test_per_source_table),
                cmocka_unit_test(test_table_bounded),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
