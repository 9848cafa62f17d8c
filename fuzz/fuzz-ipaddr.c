/* libFuzzer target: numeric endpoints and CIDR prefixes (ipaddr.c) and the access list (acl.c).
 * Input: whitespace-separated tokens, up to the first NUL; a token starting with '!' goes to the
 * deny list, any other to the allow list. Bytes after the NUL are extra test addresses, 17 bytes
 * each (family selector, 16 address bytes).
 * Properties, each token: an endpoint that parses formats to text that parses back to the same
 * IpAddr (and through a sockaddr too); a prefix that parses (or is refused with -EDOM and the
 * masked suggestion) formats to text that parses back to the same IpAddr; prefix containment and
 * masking agree with a bit-by-bit reference. Then the ACL built from every prefix agrees with a
 * reference longest-match over all test addresses. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "echod/acl.h"
#include "shared/ipaddr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_TOKEN 256
#define MAX_PREFIXES 64
#define MAX_ADDRS 1024

static void fail(const char *what, const char *token, const IpAddr *a, const IpAddr *b) {
        char x[IPADDR_STR_MAX], y[IPADDR_STR_MAX];

        fprintf(stderr, "%s: token '%s'", what, token);
        if (a)
                fprintf(stderr, " a=%s (family %u, /%u, port %u)", ipaddr_format_prefix(a, x), a->family,
                        a->prefixlen, a->port);
        if (b)
                fprintf(stderr, " b=%s (family %u, /%u, port %u)", ipaddr_format_prefix(b, y), b->family,
                        b->prefixlen, b->port);
        fputc('\n', stderr);
        abort();
}

static bool bit(const uint8_t *bytes, unsigned i) {
        return (bytes[i / 8] >> (7 - i % 8)) & 1;
}

static bool ref_contains(const IpAddr *p, const IpAddr *a) {
        if (p->family != a->family)
                return false;
        for (unsigned i = 0; i < p->prefixlen; i++)
                if (bit(p->bytes, i) != bit(a->bytes, i))
                        return false;
        return true;
}

static void check_canonical(const char *token, const IpAddr *a) {
        unsigned width = a->family == AF_INET ? 4 : 16;

        if (a->family != AF_INET && a->family != AF_INET6)
                fail("bad family", token, a, NULL);
        if (a->prefixlen > ipaddr_bits(a->family))
                fail("prefix length beyond the family", token, a, NULL);
        for (unsigned i = width; i < 16; i++)
                if (a->bytes[i])
                        fail("bytes beyond the family's width", token, a, NULL);
}

static void check_endpoint(const char *token) {
        char buf[IPADDR_STR_MAX];
        SockAddr sa;
        IpAddr a, b;
        bool wildcard, wb;

        if (ipaddr_parse_endpoint(token, &a, &wildcard) < 0)
                return;
        check_canonical(token, &a);
        if (a.prefixlen != ipaddr_bits(a.family))
                fail("endpoint is not a host", token, &a, NULL);
        if (ipaddr_parse_endpoint(ipaddr_format_endpoint(&a, buf), &b, &wb) < 0 || !ipaddr_equal(&a, &b) || wb)
                fail("endpoint format does not parse back", buf, &a, &b);
        if (ipaddr_from_sockaddr(&sa.sa, ipaddr_to_sockaddr(&a, &sa), &b) < 0 || !ipaddr_equal(&a, &b))
                fail("endpoint does not survive a sockaddr", token, &a, &b);
}

static void check_contains(const char *token, const IpAddr *p, const IpAddr *a) {
        IpAddr m = *a, r = *a;

        if (ipaddr_prefix_contains(p, a) != ref_contains(p, a))
                fail("prefix_contains differs from the reference", token, p, a);

        ipaddr_mask(&m, p->prefixlen);
        for (unsigned i = 0; i < 128; i++)
                if (i >= p->prefixlen || i >= ipaddr_bits(a->family))
                        r.bytes[i / 8] &= (uint8_t) ~(0x80u >> (i % 8));
        if (memcmp(m.bytes, r.bytes, 16) != 0 || m.port != 0 ||
            m.prefixlen != (p->prefixlen < ipaddr_bits(a->family) ? p->prefixlen : ipaddr_bits(a->family)))
                fail("ipaddr_mask differs from the reference", token, &m, &r);
}

/* Test addresses derived from a prefix: the network, every single-bit flip, the last address. */
static unsigned derive_addrs(const IpAddr *p, IpAddr *out, unsigned max) {
        unsigned n = 0, bits = ipaddr_bits(p->family);
        IpAddr host = *p;

        host.prefixlen = (uint8_t) bits;
        if (n < max)
                out[n++] = host;
        for (unsigned i = 0; i < bits && n < max; i++) {
                IpAddr f = host;
                f.bytes[i / 8] ^= (uint8_t) (0x80u >> (i % 8));
                out[n++] = f;
        }
        if (n < max) {
                IpAddr last = host;
                for (unsigned i = p->prefixlen; i < bits; i++)
                        last.bytes[i / 8] |= (uint8_t) (0x80u >> (i % 8));
                out[n++] = last;
        }
        return n;
}

static bool check_prefix(const char *token, IpAddr *ret) {
        char buf[IPADDR_STR_MAX];
        IpAddr p, q, tests[130];
        int r;

        r = ipaddr_parse_prefix(token, &p);
        if (r < 0 && r != -EDOM)
                return false;
        check_canonical(token, &p);
        /* accepted, or refused with the masked prefix to suggest: either must format and parse back */
        if (ipaddr_parse_prefix(ipaddr_format_prefix(&p, buf), &q) != 0 || !ipaddr_equal(&p, &q))
                fail("prefix format does not parse back", buf, &p, &q);
        if (p.port != 0)
                fail("prefix with a port", token, &p, NULL);

        unsigned n = derive_addrs(&p, tests, 130);
        for (unsigned i = 0; i < n; i++)
                check_contains(token, &p, &tests[i]);
        /* the host address itself, formatted without a length, is a host prefix */
        if (ipaddr_parse_prefix(ipaddr_format_host(&p, buf), &q) != 0 || q.prefixlen != ipaddr_bits(p.family) ||
            memcmp(q.bytes, p.bytes, 16) != 0)
                fail("host format does not parse back", buf, &p, &q);
        *ret = p;
        return r == 0;
}

typedef struct Entry {
        IpAddr prefix;
        bool allow;
} Entry;

/* Longest containing prefix decides; the same prefix in both lists is ambiguous (the config
 * refuses it): returns -1 then. */
static int ref_allows(const Entry *e, unsigned n, bool default_allow, const IpAddr *a) {
        int best = -1, verdict = default_allow;

        for (unsigned i = 0; i < n; i++) {
                if (!ref_contains(&e[i].prefix, a))
                        continue;
                if ((int) e[i].prefix.prefixlen > best) {
                        best = e[i].prefix.prefixlen;
                        verdict = e[i].allow;
                } else if ((int) e[i].prefix.prefixlen == best && verdict != e[i].allow)
                        return -1;
        }
        return verdict;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static Entry entries[MAX_PREFIXES];
        static IpAddr allow[MAX_PREFIXES], deny[MAX_PREFIXES], addrs[MAX_ADDRS];
        const uint8_t *nul = memchr(data, 0, size);
        size_t tlen = nul ? (size_t) (nul - data) : size;
        unsigned n_entries = 0, n_allow = 0, n_deny = 0, n_addrs = 0;
        char token[MAX_TOKEN + 1];

        for (size_t pos = 0; pos < tlen;) {
                size_t start = pos, len;
                while (pos < tlen && !strchr(" \t\r\n", data[pos]))
                        pos++;
                len = pos - start;
                pos++;
                if (len == 0 || len > MAX_TOKEN)
                        continue;
                memcpy(token, data + start, len);
                token[len] = 0;

                check_endpoint(token);
                bool deny_entry = token[0] == '!';
                IpAddr p;
                if (!check_prefix(token + deny_entry, &p) || n_entries >= MAX_PREFIXES)
                        continue;
                entries[n_entries++] = (Entry) { p, !deny_entry };
                if (deny_entry)
                        deny[n_deny++] = p;
                else
                        allow[n_allow++] = p;
                n_addrs += derive_addrs(&p, addrs + n_addrs, MAX_ADDRS - n_addrs);
        }

        /* extra addresses from the binary tail, checked against every prefix too */
        if (nul)
                for (const uint8_t *q = nul + 1; q + 17 <= data + size && n_addrs < MAX_ADDRS; q += 17) {
                        IpAddr a = { .family = (q[0] & 1) ? AF_INET6 : AF_INET };
                        a.prefixlen = (uint8_t) ipaddr_bits(a.family);
                        memcpy(a.bytes, q + 1, a.family == AF_INET ? 4 : 16);
                        addrs[n_addrs++] = a;
                        for (unsigned i = 0; i < n_entries; i++)
                                check_contains("(binary tail)", &entries[i].prefix, &a);
                }

        CidrList al = { allow, n_allow }, dl = { deny, n_deny };
        Acl *acl = NULL;
        if (acl_new(&al, &dl, &acl) < 0)
                abort();
        for (unsigned i = 0; i < n_addrs; i++) {
                int want = ref_allows(entries, n_entries, n_allow == 0, &addrs[i]);
                if (want >= 0 && acl_allows(acl, &addrs[i]) != (bool) want)
                        fail("acl_allows differs from the reference longest match", "(acl)", &addrs[i], NULL);
        }
        acl_free(acl);
        return 0;
}
