/* Unit tests: the shared JSON writer — string escaping, nesting and commas (pretty and
 * compact), numbers, non-finite doubles as null. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/json.h"
#include "shared/macro.h"

typedef struct Buf {
        char *data;
        size_t size;
        FILE *f;
} Buf;

static void buf_open(Buf *b, JsonWriter *j, bool pretty) {
        *b = (Buf) { .data = NULL };
        b->f = open_memstream(&b->data, &b->size);
        assert_non_null(b->f);
        json_init(j, b->f, pretty);
}

/* Closes the stream, compares and frees. */
static void buf_check(Buf *b, const char *want) {
        assert_int_equal(fclose(b->f), 0);
        assert_string_equal(b->data, want);
        free(b->data);
}

static void test_escape(void **state) {
        static const struct {
                const char *in, *out;
        } table[] = {
                { "", "\"\"" },
                { "plain 1.2.3.4:7", "\"plain 1.2.3.4:7\"" },
                { "a\"b", "\"a\\\"b\"" },
                { "a\\b", "\"a\\\\b\"" },
                { "/etc/echod\\x.conf", "\"/etc/echod\\\\x.conf\"" },
                { "line\nnext", "\"line\\u000anext\"" },
                { "\t\r\b\f", "\"\\u0009\\u000d\\u0008\\u000c\"" },
                { "\x01", "\"\\u0001\"" },
                { "\x1f", "\"\\u001f\"" },
                { " ~", "\" ~\"" },
                { "\x7f", "\"\x7f\"" },                       /* DEL needs no escape (RFC 8259) */
                { "caf\xc3\xa9 \xe2\x82\xac", "\"caf\xc3\xa9 \xe2\x82\xac\"" }, /* UTF-8 as it is */
                { "\xff\x80", "\"\xff\x80\"" },               /* invalid UTF-8: passed through */
                { "/", "\"/\"" },
        };
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                Buf b;
                JsonWriter j;

                buf_open(&b, &j, false);
                json_str(&j, NULL, table[i].in);
                buf_check(&b, table[i].out);
        }
}

static void test_keys_escaped(void **state) {
        Buf b;
        JsonWriter j;

        buf_open(&b, &j, false);
        json_object_open(&j, NULL);
        json_bool(&j, "a\"\n", true);
        json_object_close(&j);
        buf_check(&b, "{\"a\\\"\\u000a\":true}\n");
}

static void write_nested(JsonWriter *j) {
        json_object_open(j, NULL);
        json_str(j, "s", "x");
        json_str(j, "none", NULL);
        json_array_open(j, "empty");
        json_array_close(j);
        json_object_open(j, "empty_obj");
        json_object_close(j);
        json_array_open(j, "list");
        json_u64(j, NULL, 1);
        json_object_open(j, NULL);
        json_bool(j, "t", true);
        json_bool(j, "f", false);
        json_object_close(j);
        json_array_open(j, NULL);
        json_null(j, NULL);
        json_array_close(j);
        json_unsigned(j, NULL, 2);
        json_array_close(j);
        json_null(j, "last");
        json_object_close(j);
}

static void test_nesting_compact(void **state) {
        Buf b;
        JsonWriter j;

        buf_open(&b, &j, false);
        write_nested(&j);
        buf_check(&b, "{\"s\":\"x\",\"none\":null,\"empty\":[],\"empty_obj\":{},"
                      "\"list\":[1,{\"t\":true,\"f\":false},[null],2],\"last\":null}\n");
}

static void test_nesting_pretty(void **state) {
        Buf b;
        JsonWriter j;

        buf_open(&b, &j, true);
        write_nested(&j);
        buf_check(&b, "{\n"
                      "  \"s\": \"x\",\n"
                      "  \"none\": null,\n"
                      "  \"empty\": [],\n"
                      "  \"empty_obj\": {},\n"
                      "  \"list\": [\n"
                      "    1,\n"
                      "    {\n"
                      "      \"t\": true,\n"
                      "      \"f\": false\n"
                      "    },\n"
                      "    [\n"
                      "      null\n"
                      "    ],\n"
                      "    2\n"
                      "  ],\n"
                      "  \"last\": null\n"
                      "}\n");
}

static void test_deep(void **state) {
        Buf b;
        JsonWriter j;
        char want[40 + 1 + 40 + 2];

        buf_open(&b, &j, false);
        for (int i = 0; i < 40; i++)
                json_array_open(&j, NULL);
        json_u64(&j, NULL, 7);
        for (int i = 0; i < 40; i++)
                json_array_close(&j);
        memset(want, '[', 40);
        want[40] = '7';
        memset(want + 41, ']', 40);
        strcpy(want + 81, "\n");
        buf_check(&b, want);
}

/* Two documents on one stream: the writer starts afresh after the outermost close. */
static void test_two_documents(void **state) {
        Buf b;
        JsonWriter j;

        buf_open(&b, &j, false);
        json_array_open(&j, NULL);
        json_array_close(&j);
        json_init(&j, b.f, false);
        json_object_open(&j, NULL);
        json_u64(&j, "n", 1);
        json_object_close(&j);
        buf_check(&b, "[]\n{\"n\":1}\n");
}

static void test_numbers(void **state) {
        Buf b;
        JsonWriter j;

        buf_open(&b, &j, false);
        json_array_open(&j, NULL);
        json_u64(&j, NULL, 0);
        json_u64(&j, NULL, UINT64_MAX);
        json_i64(&j, NULL, INT64_MIN);
        json_i64(&j, NULL, -1);
        json_i64(&j, NULL, INT64_MAX);
        json_unsigned(&j, NULL, UINT32_MAX);
        json_double(&j, NULL, 0);
        json_double(&j, NULL, 1.5);
        json_double(&j, NULL, -0.25);
        json_double(&j, NULL, 1e-7);
        json_double(&j, NULL, 1e15);
        json_array_close(&j);
        buf_check(&b, "[0,18446744073709551615,-9223372036854775808,-1,9223372036854775807,4294967295,"
                      "0.000000,1.500000,-0.250000,0.000000,1000000000000000.000000]\n");
}

static void test_non_finite(void **state) {
        Buf b;
        JsonWriter j;

        buf_open(&b, &j, true);
        json_object_open(&j, NULL);
        json_double(&j, "nan", NAN);
        json_double(&j, "inf", INFINITY);
        json_double(&j, "-inf", -INFINITY);
        json_double(&j, "ok", 2);
        json_object_close(&j);
        buf_check(&b, "{\n  \"nan\": null,\n  \"inf\": null,\n  \"-inf\": null,\n  \"ok\": 2.000000\n}\n");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_escape),
                cmocka_unit_test(test_keys_escaped),
                cmocka_unit_test(test_nesting_compact),
                cmocka_unit_test(test_nesting_pretty),
                cmocka_unit_test(test_deep),
                cmocka_unit_test(test_two_documents),
                cmocka_unit_test(test_numbers),
                cmocka_unit_test(test_non_finite),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
