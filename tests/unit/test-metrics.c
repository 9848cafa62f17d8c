/* Unit tests: the Prometheus exposition writer — escaping of label values and HELP text, and a
 * snapshot written out: every family declared (HELP, TYPE) before its samples, counters named
 * _total, histogram buckets cumulative up to +Inf = _count, seconds written exactly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "echod/metrics.h"
#include "shared/macro.h"

static char *escaped(const char *in, bool label_value) {
        char *out = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&out, &size);

        assert_non_null(f);
        metrics_escape(f, in, label_value);
        assert_int_equal(fclose(f), 0);
        return out;
}

static void test_escape(void **state) {
        static const struct {
                const char *in, *label, *help;
        } table[] = {
                { "", "", "" },
                { "127.0.0.1:7", "127.0.0.1:7", "127.0.0.1:7" },
                { "[::1]:7", "[::1]:7", "[::1]:7" },
                { "a\"b", "a\\\"b", "a\"b" },   /* a quote only in a label value */
                { "a\\b", "a\\\\b", "a\\\\b" }, /* a backslash everywhere */
                { "line\nnext", "line\\nnext", "line\\nnext" },
                { "\\n", "\\\\n", "\\\\n" }, /* a backslash and an n stay two characters */
                { "\"\\\n", "\\\"\\\\\\n", "\"\\\\\\n" },
                { "tab\there", "tab\there", "tab\there" }, /* nothing else is escaped */
                { "caf\xc3\xa9", "caf\xc3\xa9", "caf\xc3\xa9" },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                char *label = escaped(table[i].in, true), *help = escaped(table[i].in, false);
                assert_string_equal(label, table[i].label);
                assert_string_equal(help, table[i].help);
                free(label);
                free(help);
        }
}

/* Is line in text, whole? */
static bool has_line(const char *text, const char *line) {
        size_t n = strlen(line);

        for (const char *p = text; (p = strstr(p, line)); p++)
                if ((p == text || p[-1] == '\n') && p[n] == '\n')
                        return true;
        return false;
}

static void test_snapshot(void **state) {
        static const uint64_t bounds[] = { 1000, 1000000, 60000000 };
        StatusSources src = {
                .started_realtime = 1700000000500000,
                .loaded_realtime = 1700000100000000,
                .reloads = 2,
                .reload_failures = 1,
        };
        Listener l1 = { .proxy = true }, l2 = { .activated = true };
        Listener *listeners[] = { &l1, &l2 };
        StatusSnapshot s = {
                .src = &src,
                .listeners = listeners,
                .n_listeners = 2,
                .active = 3,
                .max_connections = 512,
                .bytes_in = 1234,
                .bytes_out = 1200,
                .spawner = { .state = SPAWNER_STUCK, .stalled_usec = 2500000, .restarts = 4, .queued = 1 },
                .tables = { [STATUS_TABLE_RATE] = { .entries = 7,
                                                    .capacity = 65536,
                                                    .overflows = 9,
                                                    .evictions = 11 } },
        };
        char *out = NULL, *line, *save;
        size_t size = 0;
        FILE *f;

        bool wildcard;
        assert_int_equal(ipaddr_parse_endpoint("127.0.0.1:7", &l1.bound, &wildcard), 0);
        assert_int_equal(ipaddr_parse_endpoint("[::1]:7007", &l2.bound, &wildcard), 0);
        s.refused[REFUSE_ACL] = 5;
        s.counters.accepted = 10;
        s.counters.closed_by[WORKER_CLEAN] = 6;
        s.counters.closed_by[CHILD_END_KILLED] = 1;
        s.counters.duration_usec = (ChildHistogram) {
                .bounds = bounds, .n_bounds = 3, .counts = { 2, 3, 0, 2 }, .sum = 121500000, .count = 7
        };
        s.counters.bytes =
                (ChildHistogram) { .bounds = bounds, .n_bounds = 3, .counts = { 1, 0, 0, 0 }, .sum = 64, .count = 1 };

        f = open_memstream(&out, &size);
        assert_non_null(f);
        metrics_write(&s, f);
        assert_int_equal(fclose(f), 0);

        static const char *const want[] = {
                "echod_start_time_seconds 1700000000.5",
                "echod_config_reloads_total{result=\"success\"} 2",
                "echod_config_reloads_total{result=\"failure\"} 1",
                "echod_config_last_reload_success_timestamp_seconds 1700000100",
                "echod_listeners 2",
                "echod_listener_info{address=\"127.0.0.1:7\",proxy=\"yes\",socket=\"bound\"} 1",
                "echod_listener_info{address=\"[::1]:7007\",proxy=\"no\",socket=\"activated\"} 1",
                "echod_connections_accepted_total 10",
                "echod_connections_refused_total{reason=\"acl\"} 5",
                "echod_connections_refused_total{reason=\"spawner-failed\"} 0",
                "echod_connections_active 3",
                "echod_connections_max 512",
                "echod_sessions_closed_total{reason=\"clean\"} 6",
                "echod_sessions_closed_total{reason=\"killed\"} 1",
                "echod_sessions_closed_total{reason=\"unknown-exit\"} 0",
                "echod_received_bytes_total 1234",
                "echod_sent_bytes_total 1200",
                "# TYPE echod_session_duration_seconds histogram",
                "echod_session_duration_seconds_bucket{le=\"0.001\"} 2",
                "echod_session_duration_seconds_bucket{le=\"1\"} 5", /* cumulative */
                "echod_session_duration_seconds_bucket{le=\"60\"} 5",
                "echod_session_duration_seconds_bucket{le=\"+Inf\"} 7",
                "echod_session_duration_seconds_sum 121.5",
                "echod_session_duration_seconds_count 7",
                "echod_session_bytes_bucket{le=\"1000\"} 1",
                "echod_session_bytes_bucket{le=\"+Inf\"} 1",
                "echod_session_bytes_sum 64",
                "echod_spawner_restarts_total 4",
                "echod_spawner_state{state=\"running\"} 0",
                "echod_spawner_state{state=\"stuck\"} 1",
                "echod_spawner_stalled_seconds 2.5",
                "echod_spawner_handoffs_queued 1",
                "echod_source_table_entries{table=\"rate\"} 7",
                "echod_source_table_capacity{table=\"rate\"} 65536",
                "echod_source_table_overflows_total{table=\"rate\"} 9",
                "echod_source_table_evictions_total{table=\"rate\"} 11",
                "echod_source_table_entries{table=\"connections\"} 0",
        };
        for (size_t i = 0; i < ELEMENTSOF(want); i++)
                if (!has_line(out, want[i]))
                        fail_msg("missing line: %s\n%s", want[i], out);

        /* every sample belongs to the family declared last, with HELP then TYPE; a counter is _total */
        char family[128] = "", type[32] = "";
        bool helped = false;
        for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                char name[128];
                if (sscanf(line, "# HELP %127s", name) == 1) {
                        assert_string_not_equal(name, family);
                        snprintf(family, sizeof(family), "%s", name);
                        assert_true(strncmp(family, "echod_", 6) == 0);
                        helped = true;
                        type[0] = 0;
                        continue;
                }
                if (sscanf(line, "# TYPE %127s %31s", name, type) == 2) {
                        assert_true(helped);
                        assert_string_equal(name, family);
                        helped = false;
                        if (streq(type, "counter"))
                                assert_string_equal(family + strlen(family) - 6, "_total");
                        continue;
                }
                assert_true(type[0] != 0);
                size_t n = strcspn(line, "{ ");
                assert_true(n < sizeof(name));
                memcpy(name, line, n);
                name[n] = 0;
                if (streq(type, "histogram")) {
                        size_t fl = strlen(family);
                        assert_true(strncmp(name, family, fl) == 0);
                        assert_true(streq(name + fl, "_bucket") || streq(name + fl, "_sum") ||
                                    streq(name + fl, "_count"));
                } else
                        assert_string_equal(name, family);
        }
        free(out);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_escape),
                cmocka_unit_test(test_snapshot),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
