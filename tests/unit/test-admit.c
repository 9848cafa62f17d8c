/* Unit tests: admission limits, source grouping by prefix, refusal summaries on a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "echod/admit.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

static IpAddr peer(const char *s) {
        IpAddr a;
        assert_int_equal(ipaddr_parse_endpoint(s, &a, NULL), 0);
        return a;
}

static void test_source_key(void **state) {
        AdmitLimits l = { .prefix_v4 = 24, .prefix_v6 = 64 };
        IpAddr a = peer("198.51.100.77:1234"), b = peer("198.51.100.3:999"), c = peer("198.51.101.3:1");
        IpAddr ka, kb, kc;
        char buf[IPADDR_STR_MAX];

        admit_source_key(&a, &l, &ka);
        admit_source_key(&b, &l, &kb);
        admit_source_key(&c, &l, &kc);
        assert_string_equal(ipaddr_format_prefix(&ka, buf), "198.51.100.0/24");
        assert_true(ipaddr_equal(&ka, &kb)); /* same /24, different port */
        assert_false(ipaddr_equal(&ka, &kc));

        IpAddr v6 = peer("[2001:db8:0:1:aaaa::1]:5"), v6b = peer("[2001:db8:0:1:bbbb::2]:5"), k6, k6b;
        admit_source_key(&v6, &l, &k6);
        admit_source_key(&v6b, &l, &k6b);
        assert_true(ipaddr_equal(&k6, &k6b));
        assert_string_equal(ipaddr_format_prefix(&k6, buf), "2001:db8:0:1::/64");
}

static void test_limits(void **state) {
        AdmitLimits l = { .max_connections = 5, .max_per_source = 2, .prefix_v4 = 32, .prefix_v6 = 64 };
        SourceTable *t;
        IpAddr a = peer("127.0.0.2:1"), b = peer("127.0.0.3:1"), ka, kb;
        unsigned active = 0;

        assert_int_equal(source_table_new(&t), 0);
        admit_source_key(&a, &l, &ka);
        admit_source_key(&b, &l, &kb);

        for (int i = 0; i < 2; i++) {
                assert_int_equal(admit_connection(t, &l, active, &ka), ADMIT_OK);
                assert_int_equal(source_table_add(t, &ka), 0);
                active++;
        }
        assert_int_equal(admit_connection(t, &l, active, &ka), REFUSE_PER_SOURCE);
        assert_int_equal(admit_connection(t, &l, active, &kb), ADMIT_OK);
        /* global cap wins over an unused source */
        assert_int_equal(admit_connection(t, &l, 5, &kb), REFUSE_CAPACITY);
        /* a freed connection makes room again; entries vanish at zero */
        source_table_remove(t, &ka);
        assert_int_equal(source_table_count(t, &ka), 1);
        assert_int_equal(admit_connection(t, &l, active - 1, &ka), ADMIT_OK);
        source_table_remove(t, &ka);
        assert_int_equal(source_table_size(t), 0);
        /* 0 = no per-source limit */
        l.max_per_source = 0;
        for (int i = 0; i < 4; i++)
                assert_int_equal(source_table_add(t, &ka), 0);
        assert_int_equal(admit_connection(t, &l, 4, &ka), ADMIT_OK);
        source_table_clear(t);
        assert_int_equal(source_table_count(t, &ka), 0);
        source_table_free(t);
}

static void test_many_sources(void **state) {
        AdmitLimits l = { .max_connections = 70000, .max_per_source = 1, .prefix_v4 = 32, .prefix_v6 = 128 };
        SourceTable *t;

        assert_int_equal(source_table_new(&t), 0);
        /* 60000 distinct sources in, then out in a different order: the table stays exact */
        for (uint32_t i = 0; i < 60000; i++) {
                IpAddr k = { .family = AF_INET, .prefixlen = 32 };
                memcpy(k.bytes, &i, 4);
                assert_int_equal(admit_connection(t, &l, 0, &k), ADMIT_OK);
                assert_int_equal(source_table_add(t, &k), 0);
                assert_int_equal(admit_connection(t, &l, 0, &k), REFUSE_PER_SOURCE);
        }
        assert_int_equal(source_table_size(t), 60000);
        for (uint32_t j = 0; j < 60000; j++) {
                uint32_t i = (j * 7919) % 60000;
                IpAddr k = { .family = AF_INET, .prefixlen = 32 };
                memcpy(k.bytes, &i, 4);
                assert_int_equal(source_table_count(t, &k), 1);
                source_table_remove(t, &k);
                assert_int_equal(source_table_count(t, &k), 0);
        }
        assert_int_equal(source_table_size(t), 0);
        source_table_free(t);
}

static void test_refusal_window(void **state) {
        RefusalWindow w = { 0 };
        RefusalSummary s;
        IpAddr a = peer("10.0.0.1:1"), b = peer("10.0.0.2:1");
        uint64_t t0 = 1000 * USEC_PER_SEC, win = 10 * USEC_PER_SEC;

        /* first one opens the window and is logged at once */
        assert_true(refusal_window_note(&w, &a, t0));
        for (int i = 0; i < 812; i++)
                assert_false(refusal_window_note(&w, i % 4 ? &a : &b, t0 + (uint64_t) i));
        assert_false(refusal_window_flush(&w, REFUSE_PER_SOURCE, t0 + win - 1, win, &s));
        assert_true(refusal_window_flush(&w, REFUSE_PER_SOURCE, t0 + win, win, &s));
        assert_int_equal(s.count, 812);
        assert_int_equal(s.top_count, 609);
        assert_true(ipaddr_equal(&s.top_source, &a));
        assert_int_equal(s.window_usec, win);

        /* a flood that goes on is summarised again, never logged one by one */
        assert_false(refusal_window_note(&w, &b, t0 + win + 1));
        assert_true(refusal_window_flush(&w, REFUSE_PER_SOURCE, t0 + 2 * win, win, &s));
        assert_int_equal(s.count, 1);
        /* a quiet window closes silently; the next refusal is reported at once again */
        assert_false(refusal_window_flush(&w, REFUSE_PER_SOURCE, t0 + 3 * win, win, &s));
        assert_int_equal(w.start_usec, 0);
        assert_true(refusal_window_note(&w, &a, t0 + 4 * win));
}

static void test_refusal_names(void **state) {
        assert_string_equal(refusal_name(REFUSE_CAPACITY), "capacity");
        assert_string_equal(refusal_name(REFUSE_PER_SOURCE), "per-source");
        assert_string_equal(refusal_name(REFUSE_FORK), "fork-failed");
        assert_string_equal(refusal_name((Refusal) 99), "unknown");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_source_key),    cmocka_unit_test(test_limits),
                cmocka_unit_test(test_many_sources),  cmocka_unit_test(test_refusal_window),
                cmocka_unit_test(test_refusal_names),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
