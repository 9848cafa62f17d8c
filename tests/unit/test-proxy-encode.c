/* Unit tests: PROXY protocol header encoder (v1 text, v2 binary), against the byte layouts in
 * HAProxy's proxy-protocol.txt. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "shared/ipaddr.h"
#include "shared/macro.h"
#include "shared/proxy.h"

static IpAddr ep(const char *s) {
        IpAddr a;
        bool w;

        assert_int_equal(ipaddr_parse_endpoint(s, &a, &w), 0);
        return a;
}

static void test_v1_lines(void **state) {
        static const struct {
                const char *src, *dst, *line;
        } table[] = {
                { "203.0.113.7:51234", "127.0.0.1:7", "PROXY TCP4 203.0.113.7 127.0.0.1 51234 7\r\n" },
                { "[2001:db8::7]:1", "[::1]:65535", "PROXY TCP6 2001:db8::7 ::1 1 65535\r\n" },
                /* mixed families: the IPv4 side is v4-mapped */
                { "192.0.2.1:1000", "[::1]:7", "PROXY TCP6 ::ffff:192.0.2.1 ::1 1000 7\r\n" },
                { "255.255.255.255:65535", "255.255.255.255:65535",
                  "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n" },
        };
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                IpAddr s = ep(table[i].src), d = ep(table[i].dst);
                char buf[PROXY_V1_MAX];
                ssize_t n = proxy_encode_v1(&s, &d, buf, sizeof(buf));

                assert_int_equal(n, strlen(table[i].line));
                assert_memory_equal(buf, table[i].line, (size_t) n);
        }
}

static void test_v1_longest_fits(void **state) {
        IpAddr s = ep("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
        char buf[PROXY_V1_MAX];
        ssize_t n = proxy_encode_v1(&s, &s, buf, sizeof(buf));

        assert_true(n > 0 && n <= 107);
        assert_memory_equal(buf + n - 2, "\r\n", 2);
}

static void test_v1_unknown_and_errors(void **state) {
        IpAddr s = ep("127.0.0.1:1");
        char buf[PROXY_V1_MAX];

        assert_int_equal(proxy_encode_v1(NULL, NULL, buf, sizeof(buf)), 15);
        assert_memory_equal(buf, "PROXY UNKNOWN\r\n", 15);
        assert_int_equal(proxy_encode_v1(&s, NULL, buf, sizeof(buf)), -EINVAL);
        assert_int_equal(proxy_encode_v1(&s, &s, buf, 10), -ENOBUFS);
        IpAddr bad = s;
        bad.family = AF_UNIX;
        assert_int_equal(proxy_encode_v1(&bad, &s, buf, sizeof(buf)), -EAFNOSUPPORT);
}

static void test_v2_ipv4(void **state) {
        static const uint8_t want[] = {
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
                0x21, 0x11, 0x00, 0x0C,
                203, 0, 113, 7, 127, 0, 0, 1,
                0xC8, 0x22, 0x00, 0x07,
        };
        IpAddr s = ep("203.0.113.7:51234"), d = ep("127.0.0.1:7");
        uint8_t buf[PROXY_V2_MAX];

        assert_int_equal(proxy_encode_v2(&s, &d, buf, sizeof(buf)), sizeof(want));
        assert_memory_equal(buf, want, sizeof(want));
        assert_int_equal(proxy_encode_v2(&s, &d, buf, sizeof(want) - 1), -ENOBUFS);
}

static void test_v2_ipv6_and_mixed(void **state) {
        IpAddr s = ep("[2001:db8::7]:1"), d = ep("[::1]:7"), m = ep("192.0.2.1:1000");
        uint8_t buf[PROXY_V2_MAX];

        assert_int_equal(proxy_encode_v2(&s, &d, buf, sizeof(buf)), 52);
        assert_int_equal(buf[12], 0x21);
        assert_int_equal(buf[13], 0x21);
        assert_int_equal(buf[14] << 8 | buf[15], 36);
        assert_memory_equal(buf + 16, s.bytes, 16);
        assert_memory_equal(buf + 32, d.bytes, 16);
        assert_int_equal(buf[48] << 8 | buf[49], 1);
        assert_int_equal(buf[50] << 8 | buf[51], 7);

        static const uint8_t mapped[16] = { [10] = 0xff, [11] = 0xff, [12] = 192, [13] = 0, [14] = 2, [15] = 1 };
        assert_int_equal(proxy_encode_v2(&m, &d, buf, sizeof(buf)), 52);
        assert_int_equal(buf[13], 0x21);
        assert_memory_equal(buf + 16, mapped, 16);
}

static void test_v2_local(void **state) {
        uint8_t buf[PROXY_V2_MAX];

        assert_int_equal(proxy_encode_v2(NULL, NULL, buf, sizeof(buf)), 16);
        assert_memory_equal(buf, proxy_v2_signature, PROXY_V2_SIGNATURE_LEN);
        assert_int_equal(buf[12], 0x20);
        assert_int_equal(buf[13], 0x00);
        assert_int_equal(buf[14] | buf[15], 0);
}

static void test_dispatch(void **state) {
        IpAddr s = ep("127.0.0.1:1");
        uint8_t buf[PROXY_HEADER_MAX];

        assert_int_equal(proxy_encode_header(1, &s, &s, buf, sizeof(buf)), strlen("PROXY TCP4 127.0.0.1 127.0.0.1 1 1\r\n"));
        assert_int_equal(proxy_encode_header(2, &s, &s, buf, sizeof(buf)), 28);
        assert_int_equal(proxy_encode_header(3, &s, &s, buf, sizeof(buf)), -EINVAL);
        assert_true(PROXY_V2_MAX <= PROXY_HEADER_MAX);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_v1_lines),
                cmocka_unit_test(test_v1_longest_fits),
                cmocka_unit_test(test_v1_unknown_and_errors),
                cmocka_unit_test(test_v2_ipv4),
                cmocka_unit_test(test_v2_ipv6_and_mixed),
                cmocka_unit_test(test_v2_local),
                cmocka_unit_test(test_dispatch),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
