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
        /* O(1): the new source dropped the two least recently taken (full) buckets, not all 100 */
        assert_int_equal(rate_table_size(t), 99);
        assert_int_equal(rate_table_sweep(t, 1, 5, T0 + 20 * USEC_PER_SEC), 0);
        rate_table_free(t);
}

static void fill(RateTable *t, uint32_t first, uint32_t n, double rate, unsigned burst, uint64_t now) {
        for (uint32_t i = first; i < first + n; i++) {
                IpAddr s = source(i);
                assert_true(rate_table_take(t, &s, rate, burst, now));
        }
}

static void test_full_table_overflows_then_evicts(void **state) {
        RateTable *t;
        IpAddr flood = source(1000), later = source(2000);

        /* 1/s, burst 5: one take leaves 4 tokens, full again a second later */
        assert_int_equal(rate_table_new(64, &t), 0);
        fill(t, 0, 64, 1, 5, T0);
        assert_int_equal(rate_table_size(t), 64);
        assert_int_equal(rate_table_capacity(t), 64);
        assert_int_equal(rate_table_overflows(t), 0);
        assert_int_equal(rate_table_evictions(t), 0);

        /* every tracked source mid-burst: a new one is let through unlimited, counted, not tracked */
        for (int i = 0; i < 10; i++)
                assert_true(rate_table_take(t, &flood, 1, 5, T0 + 500 * USEC_PER_MSEC));
        assert_int_equal(rate_table_overflows(t), 10);
        assert_int_equal(rate_table_size(t), 64);

        /* refilled: a new source drops full buckets from the tail, takes a slot and is limited */
        for (int i = 0; i < 5; i++)
                assert_true(rate_table_take(t, &later, 1, 5, T0 + 2 * USEC_PER_SEC));
        assert_false(rate_table_take(t, &later, 1, 5, T0 + 2 * USEC_PER_SEC));
        assert_int_equal(rate_table_overflows(t), 10);
        assert_int_equal(rate_table_size(t), 63); /* two dropped, one added */
        assert_int_equal(rate_table_evictions(t), 2);

        /* A stream of new sources under max * rate / burst = 12.8 a second never overflows, even
         * though later, its burst spent, holds the tail for burst / rate = 5 s; and as each source
         * is full again a second after its take, the table shrinks to about one second's worth. */
        for (uint32_t i = 0; i < 300; i++)
                fill(t, 3000 + i, 1, 1, 5, T0 + 3 * USEC_PER_SEC + i * 100 * USEC_PER_MSEC);
        assert_int_equal(rate_table_overflows(t), 10);
        assert_true(rate_table_size(t) <= 11); /* 10 taken in the last second, and the newest */
        rate_table_free(t);
}

static void test_lru_keeps_busy_source(void **state) {
        RateTable *t;
        IpAddr a = source(1), e = source(5), f = source(6), g = source(7), h = source(8);
        uint64_t now = T0 + 1500 * USEC_PER_MSEC;

        /* 1/s, burst 2. a is the oldest source but stays busy; b, c, d go idle */
        assert_int_equal(rate_table_new(4, &t), 0);
        fill(t, 1, 4, 1, 2, T0);
        assert_true(rate_table_take(t, &a, 1, 2, T0 + 500 * USEC_PER_MSEC));
        assert_false(rate_table_take(t, &a, 1, 2, T0 + 500 * USEC_PER_MSEC)); /* 0.5 token left */

        /* at 1.5 s b, c and d are full, a is not (1.5 tokens): were the table in insertion order,
         * a would be the eviction candidate and block the way; least recently taken, it is not */
        assert_true(rate_table_take(t, &e, 1, 2, now));
        assert_int_equal(rate_table_overflows(t), 0);
        assert_int_equal(rate_table_size(t), 3); /* b and c dropped, e added */
        /* a kept its state: one token and a half, not a fresh burst of two */
        assert_true(rate_table_take(t, &a, 1, 2, now));
        assert_false(rate_table_take(t, &a, 1, 2, now));
        /* f drops d; g takes the free slot; then only busy sources are left: h overflows */
        assert_true(rate_table_take(t, &f, 1, 2, now));
        assert_int_equal(rate_table_size(t), 3);
        assert_true(rate_table_take(t, &g, 1, 2, now));
        assert_int_equal(rate_table_size(t), 4);
        assert_true(rate_table_take(t, &h, 1, 2, now));
        assert_int_equal(rate_table_overflows(t), 1);
        assert_int_equal(rate_table_size(t), 4);
        /* a was never dropped */
        assert_false(rate_table_take(t, &a, 1, 2, now));
        rate_table_free(t);
}

static void test_table_clear(void **state) {
        RateTable *t;
        IpAddr a = source(0), extra = source(100);

        assert_int_equal(rate_table_new(16, &t), 0);
        fill(t, 0, 16, 1, 1, T0);
        assert_false(rate_table_take(t, &a, 1, 1, T0)); /* burst 1: spent */
        assert_true(rate_table_take(t, &extra, 1, 1, T0));
        assert_int_equal(rate_table_overflows(t), 1);

        rate_table_clear(t);
        assert_int_equal(rate_table_size(t), 0);
        assert_int_equal(rate_table_sweep(t, 1, 1, T0), 0);
        /* forgotten: a starts afresh, and the whole table is there to fill again */
        fill(t, 0, 16, 1, 1, T0);
        assert_int_equal(rate_table_size(t), 16);
        assert_int_equal(rate_table_overflows(t), 1);
        assert_false(rate_table_take(t, &a, 1, 1, T0));
        assert_true(rate_table_take(t, &extra, 1, 1, T0));
        assert_int_equal(rate_table_overflows(t), 2);

        /* a partial sweep unlinks from the middle of the list; the table stays consistent */
        fill(t, 0, 8, 1, 1, T0 + USEC_PER_SEC); /* 0..7 busy again, 8..15 idle and full */
        assert_int_equal(rate_table_sweep(t, 1, 1, T0 + USEC_PER_SEC), 8);
        fill(t, 200, 8, 1, 1, T0 + USEC_PER_SEC);
        assert_int_equal(rate_table_size(t), 16);
        assert_true(rate_table_take(t, &extra, 1, 1, T0 + USEC_PER_SEC));
        assert_int_equal(rate_table_overflows(t), 3);
        rate_table_free(t);
}

static uint32_t xorshift(uint32_t *x) {
        *x ^= *x << 13;
        *x ^= *x >> 17;
        *x ^= *x << 5;
        return *x;
}

/* Against a model with a bucket for every source: only full buckets are ever dropped, so every
 * answer matches the model's, except an overflow (let through untracked, as if full). */
static void test_table_matches_unbounded_model(void **state) {
        enum { SOURCES = 200, MAX = 32 };
        TokenBucket model[SOURCES] = { { 0 } };
        RateTable *t;
        uint64_t now = T0;
        uint32_t x = 2463534242u;
        bool was_full = false, evicted = false;

        assert_int_equal(rate_table_new(MAX, &t), 0);
        for (int step = 0; step < 200000; step++) {
                /* half the takes from 8 busy sources (over the rate), half from 192 occasional ones */
                uint32_t r = xorshift(&x), id = r & 1 ? (r >> 1) % 8 : 8 + (r >> 1) % (SOURCES - 8);
                IpAddr s = source(id);
                uint64_t overflows = rate_table_overflows(t);
                bool want, got;

                now += xorshift(&x) % (20 * USEC_PER_MSEC);
                want = token_bucket_take(&model[id], 2, 3, now);
                got = rate_table_take(t, &s, 2, 3, now);
                if (rate_table_overflows(t) != overflows) {
                        assert_true(got);
                        model[id] = (TokenBucket) { 0 };
                } else
                        assert_int_equal(got, want);
                assert_true(rate_table_size(t) <= MAX);
                if (rate_table_size(t) == MAX)
                        was_full = true;
                else if (was_full)
                        evicted = true;
                if (step % 9973 == 9972) {
                        (void) rate_table_sweep(t, 2, 3, now);
                        was_full = false;
                }
                if (step % 49999 == 49998) {
                        rate_table_clear(t);
                        memset(model, 0, sizeof(model));
                        was_full = false;
                }
        }
        /* the mix did reach both paths */
        assert_true(rate_table_overflows(t) > 0);
        assert_true(evicted);
        rate_table_free(t);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_burst_then_rate),     cmocka_unit_test(test_steady_rate_over_time),
                cmocka_unit_test(test_fractional_rate),     cmocka_unit_test(test_clock_going_backwards_is_harmless),
                cmocka_unit_test(test_default_burst),       cmocka_unit_test(test_per_source_table),
                cmocka_unit_test(test_table_bounded),       cmocka_unit_test(test_full_table_overflows_then_evicts),
                cmocka_unit_test(test_lru_keeps_busy_source),
                cmocka_unit_test(test_table_clear),
                cmocka_unit_test(test_table_matches_unbounded_model),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
