/* Unit tests: which UDP datagrams get an answer (udp-policy.c), on an injected clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>

#include "echod/udp-policy.h"
#include "shared/timeutil.h"

#define T0 (1000 * USEC_PER_SEC)

static IpAddr addr(const char *s) {
        IpAddr a;
        bool wildcard;
        assert_int_equal(ipaddr_parse_endpoint(s, &a, &wildcard), 0);
        return a;
}

static IpAddr prefix(const char *s) {
        IpAddr a;
        assert_int_equal(ipaddr_parse_prefix(s, &a), 0);
        return a;
}

/* Limits that never bind, unless a test sets them. */
static UdpLimits open_limits(void) {
        UdpLimits l = { .sources = 1024, .max_size = 65507, .prefix_v4 = 32, .prefix_v6 = 64 };
        static const uint16_t deny[] = { 7, 19 };
        udp_limits_deny_ports(&l, deny, 2);
        return l;
}

static UdpPolicy *policy(const UdpLimits *l, const CidrList *allow, const CidrList *deny, const CidrList *bcast) {
        static const CidrList none = { 0 };
        UdpPolicy *p = NULL;
        assert_int_equal(udp_policy_new(l, allow ? allow : &none, deny ? deny : &none, bcast ? bcast : &none, &p), 0);
        return p;
}

static int judge(UdpPolicy *p, const char *src, const char *dst, size_t len, uint64_t now) {
        IpAddr s = addr(src), d = addr(dst);
        return udp_policy_judge(p, &s, &d, false, len, now);
}

static void test_addresses_never_answered(void **state) {
        UdpLimits l = open_limits();
        IpAddr b = prefix("192.0.2.255");
        CidrList bcast = { &b, 1 };
        UdpPolicy *p = policy(&l, NULL, NULL, &bcast);
        IpAddr s = addr("192.0.2.1:4000"), d = addr("192.0.2.10:7");

        assert_int_equal(judge(p, "192.0.2.1:4000", "192.0.2.10:7", 64, T0), -1);
        /* sources no answer may go to */
        assert_int_equal(judge(p, "192.0.2.1:0", "192.0.2.10:7", 64, T0), UDP_DROP_BAD_SOURCE);
        assert_int_equal(judge(p, "255.255.255.255:4000", "192.0.2.10:7", 64, T0), UDP_DROP_BAD_SOURCE);
        assert_int_equal(judge(p, "192.0.2.255:4000", "192.0.2.10:7", 64, T0), UDP_DROP_BAD_SOURCE);
        assert_int_equal(judge(p, "224.0.0.1:4000", "192.0.2.10:7", 64, T0), UDP_DROP_BAD_SOURCE);
        assert_int_equal(judge(p, "0.0.0.0:4000", "192.0.2.10:7", 64, T0), UDP_DROP_BAD_SOURCE);
        assert_int_equal(judge(p, "[ff02::1]:4000", "[2001:db8::1]:7", 64, T0), UDP_DROP_BAD_SOURCE);
        assert_int_equal(judge(p, "[::]:4000", "[2001:db8::1]:7", 64, T0), UDP_DROP_BAD_SOURCE);
        /* sent to a group, or to a broadcast address */
        assert_int_equal(judge(p, "192.0.2.1:4000", "255.255.255.255:7", 64, T0), UDP_DROP_BAD_DESTINATION);
        assert_int_equal(judge(p, "192.0.2.1:4000", "192.0.2.255:7", 64, T0), UDP_DROP_BAD_DESTINATION);
        assert_int_equal(judge(p, "192.0.2.1:4000", "239.1.2.3:7", 64, T0), UDP_DROP_BAD_DESTINATION);
        assert_int_equal(judge(p, "[2001:db8::2]:4000", "[ff02::1]:7", 64, T0), UDP_DROP_BAD_DESTINATION);
        /* the kernel's word that it was not for one of our unicast addresses */
        assert_int_equal(udp_policy_judge(p, &s, &d, true, 64, T0), UDP_DROP_BAD_DESTINATION);
        /* mapped IPv4, as a dual-stack socket reports it, is IPv4 */
        struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_port = htons(4000) };
        assert_int_equal(inet_pton(AF_INET6, "::ffff:192.0.2.255", &sa.sin6_addr), 1);
        assert_int_equal(ipaddr_from_sockaddr((struct sockaddr *) &sa, sizeof(sa), &s), 0);
        assert_int_equal(udp_policy_judge(p, &s, &d, false, 64, T0), UDP_DROP_BAD_SOURCE);
        udp_policy_free(p);
}

static void test_reflector_ports(void **state) {
        UdpLimits l = open_limits();
        UdpPolicy *p = policy(&l, NULL, NULL, NULL);

        assert_int_equal(judge(p, "192.0.2.1:7", "192.0.2.10:7", 64, T0), UDP_DROP_REFLECTOR_PORT);
        assert_int_equal(judge(p, "192.0.2.1:19", "192.0.2.10:7", 64, T0), UDP_DROP_REFLECTOR_PORT);
        assert_int_equal(judge(p, "[2001:db8::2]:7", "[2001:db8::1]:7", 64, T0), UDP_DROP_REFLECTOR_PORT);
        assert_int_equal(judge(p, "192.0.2.1:8", "192.0.2.10:7", 64, T0), -1);
        assert_int_equal(judge(p, "192.0.2.1:65535", "192.0.2.10:7", 64, T0), -1);
        udp_policy_free(p);

        /* an empty list turns it off, but never for port 0 */
        l = open_limits();
        udp_limits_deny_ports(&l, NULL, 0);
        p = policy(&l, NULL, NULL, NULL);
        assert_int_equal(judge(p, "192.0.2.1:7", "192.0.2.10:7", 64, T0), -1);
        assert_int_equal(judge(p, "192.0.2.1:0", "192.0.2.10:7", 64, T0), UDP_DROP_BAD_SOURCE);
        udp_policy_free(p);
}

static void test_acl_and_size(void **state) {
        UdpLimits l = open_limits();
        IpAddr allow_items[] = { prefix("10.0.0.0/8") }, deny_items[] = { prefix("10.9.0.0/16") };
        CidrList allow = { allow_items, 1 }, deny = { deny_items, 1 };
        UdpPolicy *p;

        l.max_size = 100;
        p = policy(&l, &allow, &deny, NULL);
        assert_int_equal(judge(p, "10.1.2.3:4000", "10.0.0.1:7", 100, T0), -1);
        assert_int_equal(judge(p, "10.1.2.3:4000", "10.0.0.1:7", 101, T0), UDP_DROP_TOO_LARGE);
        assert_int_equal(judge(p, "10.9.2.3:4000", "10.0.0.1:7", 10, T0), UDP_DROP_ACL);
        assert_int_equal(judge(p, "192.0.2.1:4000", "10.0.0.1:7", 10, T0), UDP_DROP_ACL);
        udp_policy_free(p);
}

/* A source group gets burst, then rate per second, in datagrams and in bytes; another group is
 * untouched; the service's budget caps every group together. */
static void test_source_rate_and_budget(void **state) {
        UdpLimits l = open_limits();
        UdpPolicy *p;
        unsigned ok = 0, over = 0;

        l.rate = 10;
        l.burst = 5;
        l.prefix_v4 = 24;
        p = policy(&l, NULL, NULL, NULL);
        for (int i = 0; i < 20; i++) {
                char src[32];
                snprintf(src, sizeof(src), "192.0.2.%d:4000", 1 + i); /* one /24: one group */
                int r = judge(p, src, "198.51.100.1:7", 64, T0);
                ok += r == -1;
                over += r == UDP_DROP_SOURCE_RATE;
        }
        assert_int_equal(ok, 5);
        assert_int_equal(over, 15);
        assert_int_equal(judge(p, "192.0.3.1:4000", "198.51.100.1:7", 64, T0), -1);
        assert_int_equal(judge(p, "192.0.2.1:4000", "198.51.100.1:7", 64, T0 + 100 * USEC_PER_MSEC), -1);
        assert_int_equal(udp_policy_sources(p), 2);
        udp_policy_free(p);

        /* bytes: 1000 B/s with a burst of 1500: one 1472-byte datagram, then a wait */
        l = open_limits();
        l.byte_rate = 1000;
        l.byte_burst = 1500;
        p = policy(&l, NULL, NULL, NULL);
        assert_int_equal(judge(p, "192.0.2.1:4000", "198.51.100.1:7", 1472, T0), -1);
        assert_int_equal(judge(p, "192.0.2.1:4000", "198.51.100.1:7", 1472, T0 + USEC_PER_SEC), UDP_DROP_SOURCE_RATE);
        assert_int_equal(judge(p, "192.0.2.1:4000", "198.51.100.1:7", 1472, T0 + 2 * USEC_PER_SEC), -1);
        udp_policy_free(p);

        /* the budget: 100/s, burst 100, whatever the sources; 10 s of 1,000 sources at 1/s each */
        l = open_limits();
        l.rate = 50;
        l.burst = 50;
        l.budget = 100;
        l.budget_burst = 100;
        p = policy(&l, NULL, NULL, NULL);
        ok = over = 0;
        for (uint64_t t = 0; t < 10 * USEC_PER_SEC; t += USEC_PER_MSEC) {
                char src[32];
                unsigned k = (unsigned) (t / USEC_PER_MSEC) % 1000;
                snprintf(src, sizeof(src), "10.%u.%u.1:4000", k / 256, k % 256);
                int r = judge(p, src, "198.51.100.1:7", 64, T0 + t);
                ok += r == -1;
                over += r == UDP_DROP_BUDGET;
        }
        assert_true(ok >= 100 * 10 && ok <= 100 * 10 + 100 + 1);
        assert_int_equal(ok + over, 10000);
        udp_policy_free(p);
}

/* A flood of distinct sources: the table stays bounded, new groups that find it full of
 * mid-burst ones are not answered (never let through unlimited, as TCP's rate table does), and
 * each judgement stays cheap however many sources came. */
static void test_sources_full_under_address_rotation(void **state) {
        UdpLimits l = open_limits();
        UdpPolicy *p;
        unsigned ok = 0, full = 0;
        struct timespec a, b;

        l.rate = 1;
        l.burst = 2;
        l.sources = 1000;
        p = policy(&l, NULL, NULL, NULL);
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (unsigned i = 0; i < 200000; i++) {
                char src[32];
                snprintf(src, sizeof(src), "10.%u.%u.%u:4000", i >> 16 & 255, i >> 8 & 255, i & 255);
                int r = judge(p, src, "198.51.100.1:7", 64, T0 + i); /* 1 µs apart: all within one burst */
                ok += r == -1;
                full += r == UDP_DROP_SOURCES_FULL;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        assert_int_equal(ok, 1000);
        assert_int_equal(full, 199000);
        assert_int_equal(udp_policy_sources(p), 1000);
        /* once their buckets are full again (2 s at 1/s), new groups are tracked again */
        assert_int_equal(judge(p, "172.16.0.1:4000", "198.51.100.1:7", 64, T0 + 3 * USEC_PER_SEC), -1);
        /* O(1) per datagram: 200,000 in well under a second even under a sanitizer */
        double secs = (double) (b.tv_sec - a.tv_sec) + (double) (b.tv_nsec - a.tv_nsec) / 1e9;
        assert_true(secs < 5.0);
        udp_policy_free(p);
}

static void test_drop_names(void **state) {
        assert_string_equal(udp_drop_name(UDP_DROP_REFLECTOR_PORT), "reflector-port");
        assert_string_equal(udp_drop_name(UDP_DROP_SEND_FAILED), "send-failed");
        assert_string_equal(udp_drop_name(_UDP_DROP_MAX), "?");
        for (int i = 0; i < _UDP_DROP_MAX; i++)
                assert_non_null(udp_drop_name(i));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_addresses_never_answered),
                cmocka_unit_test(test_reflector_ports),
                cmocka_unit_test(test_acl_and_size),
                cmocka_unit_test(test_source_rate_and_budget),
                cmocka_unit_test(test_sources_full_under_address_rotation),
                cmocka_unit_test(test_drop_names),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
