/* Unit tests: numeric endpoint and CIDR parsing, formatting, masking, mapped IPv4. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <string.h>
#include <arpa/inet.h>

#include "shared/ipaddr.h"
#include "shared/macro.h"

static void test_endpoint_good(void **state) {
        static const struct {
                const char *in, *out;
                int family;
                bool wildcard;
        } table[] = {
                { "0.0.0.0:7", "0.0.0.0:7", AF_INET, false },
                { "127.0.0.1:65535", "127.0.0.1:65535", AF_INET, false },
                { "[::]:7", "[::]:7", AF_INET6, false },
                { "[::1]:0", "[::1]:0", AF_INET6, false },
                { "[2001:db8::1]:7007", "[2001:db8::1]:7007", AF_INET6, false },
                { "*:7", "0.0.0.0:7", AF_INET, true },
        };
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                IpAddr a;
                bool w;
                char buf[IPADDR_STR_MAX];
                assert_int_equal(ipaddr_parse_endpoint(table[i].in, &a, &w), 0);
                assert_string_equal(ipaddr_format_endpoint(&a, buf), table[i].out);
                assert_int_equal(a.family, table[i].family);
                assert_int_equal(w, table[i].wildcard);
        }
}

static void test_endpoint_bad(void **state) {
        static const char *const table[] = {
                "", ":7", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:7x",
                "::1:7", "[::1]", "[::1]7", "[127.0.0.1]:7", "localhost:7", "1.2.3:7", "256.0.0.1:7",
                "[*]:7", "127.0.0.1:99999999999999999999", "[::1:7",
                "[::ffff:10.0.0.1]:7", /* a mapped address must be written as IPv4 */
        };
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                IpAddr a;
                bool w;
                int r = ipaddr_parse_endpoint(table[i], &a, &w);
                if (r >= 0)
                        fail_msg("'%s' was accepted", table[i]);
        }
}

static void test_prefix(void **state) {
        static const struct {
                const char *in;
                int r;
                const char *out;
        } table[] = {
                { "10.0.0.0/8", 0, "10.0.0.0/8" },
                { "10.1.2.3", 0, "10.1.2.3/32" },
                { "0.0.0.0/0", 0, "0.0.0.0/0" },
                { "2001:db8::/32", 0, "2001:db8::/32" },
                { "::/0", 0, "::/0" },
                { "::ffff:10.0.0.0/104", 0, "10.0.0.0/8" }, /* mapped prefix counts 96 extra bits */
                { "10.0.0.1/8", -EDOM, NULL },              /* host bits set */
                { "10.0.0.0/33", -ERANGE, NULL },
                { "2001:db8::/129", -ERANGE, NULL },
                { "10.0.0.0/", -EINVAL, NULL },
                { "10.0.0.0/x", -EINVAL, NULL },
                { "/8", -EINVAL, NULL },
                { "example.com/8", -EINVAL, NULL },
        };
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                IpAddr a;
                char buf[IPADDR_STR_MAX];
                int r = ipaddr_parse_prefix(table[i].in, &a);
                if (r != table[i].r)
                        fail_msg("'%s': got %d, want %d", table[i].in, r, table[i].r);
                if (r == 0)
                        assert_string_equal(ipaddr_format_prefix(&a, buf), table[i].out);
        }
}

static void test_mask_and_contains(void **state) {
        IpAddr p, a, b;
        char buf[IPADDR_STR_MAX];

        assert_int_equal(ipaddr_parse_prefix("192.168.0.0/16", &p), 0);
        assert_int_equal(ipaddr_parse_endpoint("192.168.77.1:5", &a, NULL), 0);
        assert_int_equal(ipaddr_parse_endpoint("192.169.0.1:5", &b, NULL), 0);
        assert_true(ipaddr_prefix_contains(&p, &a));
        assert_false(ipaddr_prefix_contains(&p, &b));

        ipaddr_mask(&a, 24);
        assert_string_equal(ipaddr_format_prefix(&a, buf), "192.168.77.0/24");
        assert_int_equal(a.port, 0);

        assert_int_equal(ipaddr_parse_endpoint("[2001:db8:1:2:3:4:5:6]:9", &a, NULL), 0);
        ipaddr_mask(&a, 64);
        assert_string_equal(ipaddr_format_prefix(&a, buf), "2001:db8:1:2::/64");
        ipaddr_mask(&a, 200); /* clamped */
        assert_int_equal(a.prefixlen, 128);

        /* families never match each other */
        assert_int_equal(ipaddr_parse_prefix("::/0", &p), 0);
        assert_int_equal(ipaddr_parse_endpoint("1.2.3.4:1", &b, NULL), 0);
        assert_false(ipaddr_prefix_contains(&p, &b));
}

static void test_sockaddr_roundtrip(void **state) {
        struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(4242) };
        IpAddr a;
        SockAddr sa;
        char buf[IPADDR_STR_MAX];

        /* an IPv4-mapped peer on an IPv6 socket is IPv4 to us */
        inet_pton(AF_INET6, "::ffff:203.0.113.7", &in6.sin6_addr);
        assert_int_equal(ipaddr_from_sockaddr((struct sockaddr *) &in6, sizeof(in6), &a), 0);
        assert_string_equal(ipaddr_format_endpoint(&a, buf), "203.0.113.7:4242");
        assert_int_equal(ipaddr_to_sockaddr(&a, &sa), sizeof(struct sockaddr_in));
        assert_int_equal(ntohs(sa.in.sin_port), 4242);

        struct sockaddr_un_like {
                sa_family_t f;
        } un = { AF_UNIX };
        assert_int_equal(ipaddr_from_sockaddr((struct sockaddr *) &un, sizeof(un), &a), -EAFNOSUPPORT);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_endpoint_good),
                cmocka_unit_test(test_endpoint_bad),
                cmocka_unit_test(test_prefix),
                cmocka_unit_test(test_mask_and_contains),
                cmocka_unit_test(test_sockaddr_roundtrip),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
