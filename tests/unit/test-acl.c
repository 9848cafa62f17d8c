/* Unit tests: access lists — v4, v6, mapped IPv4, overlapping prefixes (most specific wins). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <stdlib.h>

#include "echod/acl.h"
#include "shared/macro.h"

static CidrList cidrs(const char *const *list) {
        CidrList l = { calloc(64, sizeof(IpAddr)), 0 };
        for (; *list; list++)
                assert_int_equal(ipaddr_parse_prefix(*list, &l.items[l.n++]), 0);
        return l;
}

static Acl *make(const char *const *allow, const char *const *deny) {
        CidrList a = cidrs(allow), d = cidrs(deny);
        Acl *acl;
        assert_int_equal(acl_new(&a, &d, &acl), 0);
        free(a.items);
        free(d.items);
        return acl;
}

static bool allows(const Acl *acl, const char *endpoint) {
        IpAddr a;
        if (ipaddr_parse_endpoint(endpoint, &a, NULL) < 0) {
                /* a v4-mapped peer as the kernel reports it on an IPv6 socket */
                struct sockaddr_in6 in6 = { .sin6_family = AF_INET6 };
                assert_int_equal(inet_pton(AF_INET6, endpoint, &in6.sin6_addr), 1);
                assert_int_equal(ipaddr_from_sockaddr((struct sockaddr *) &in6, sizeof(in6), &a), 0);
        }
        return acl_allows(acl, &a);
}

static void test_table(void **state) {
        static const char *const allow[] = { "10.0.0.0/8", "2001:db8::/32", "192.0.2.7", NULL };
        static const char *const deny[] = { "10.1.0.0/16", "2001:db8:bad::/48", "0.0.0.0/0", NULL };
        static const struct {
                const char *peer;
                bool allowed;
        } table[] = {
                { "10.2.3.4:1", true },               /* allow /8 */
                { "10.1.3.4:1", false },              /* deny /16 is more specific */
                { "192.0.2.7:1", true },              /* allow /32 beats deny /0 */
                { "192.0.2.8:1", false },             /* only deny /0 matches */
                { "[2001:db8:1::1]:1", true },        /* allow /32 */
                { "[2001:db8:bad::1]:1", false },     /* deny /48 */
                { "[2001:db9::1]:1", false },         /* no v6 match, allow list not empty */
                { "::ffff:10.2.3.4", true },          /* mapped: treated as IPv4 */
                { "::ffff:10.1.0.1", false },
        };
        Acl *acl = make(allow, deny);
        for (size_t i = 0; i < ELEMENTSOF(table); i++)
                if (allows(acl, table[i].peer) != table[i].allowed)
                        fail_msg("%s: want %s", table[i].peer, table[i].allowed ? "allowed" : "refused");
        acl_free(acl);
}

static void test_empty_allow_means_all_not_denied(void **state) {
        static const char *const none[] = { NULL };
        static const char *const deny[] = { "127.0.0.3", "::1", NULL };
        Acl *acl = make(none, deny);

        assert_true(allows(acl, "127.0.0.2:5"));
        assert_false(allows(acl, "127.0.0.3:5"));
        assert_false(allows(acl, "[::1]:5"));
        assert_true(allows(acl, "[::2]:5"));
        acl_free(acl);

        acl = make(none, none);
        assert_true(allows(acl, "203.0.113.1:1"));
        acl_free(acl);
}

static void test_allow_only(void **state) {
        static const char *const allow[] = { "127.0.0.2/32", "127.0.1.0/24", NULL };
        static const char *const none[] = { NULL };
        Acl *acl = make(allow, none);

        assert_true(allows(acl, "127.0.0.2:5"));
        assert_false(allows(acl, "127.0.0.3:5"));
        assert_true(allows(acl, "127.0.1.200:5"));
        assert_false(allows(acl, "[::1]:5")); /* a non-empty allow list covers both families */
        acl_free(acl);
}

static void test_nested_overlaps(void **state) {
        /* deny 10/8, allow 10.5/16, deny 10.5.5/24, allow 10.5.5.5/32: each level flips */
        static const char *const allow[] = { "10.5.5.5", "10.5.0.0/16", NULL };
        static const char *const deny[] = { "10.5.5.0/24", "10.0.0.0/8", NULL };
        Acl *acl = make(allow, deny);

        assert_false(allows(acl, "10.9.0.1:1"));
        assert_true(allows(acl, "10.5.9.9:1"));
        assert_false(allows(acl, "10.5.5.4:1"));
        assert_true(allows(acl, "10.5.5.5:1"));
        assert_false(allows(acl, "11.0.0.1:1")); /* allow list not empty, nothing matches */
        acl_free(acl);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_table),
                cmocka_unit_test(test_empty_allow_means_all_not_denied),
                cmocka_unit_test(test_allow_only),
                cmocka_unit_test(test_nested_overlaps),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
