/* libFuzzer target: the PROXY protocol v1/v2 header parser (proxy.c) and, through round trips,
 * its encoders. Properties: the result is > 0 and <= len (and h.length), 0, or one of the
 * documented errors; *ret is untouched unless a header is returned; never 0 for len >=
 * PROXY_PARSE_MAX; every prefix of the input (each in its own exactly-sized heap copy, so ASan
 * sees any over-read) returns 0 until the answer is decided and then exactly that answer; an
 * accepted header re-encoded as v1 and as v2 parses back to the same addresses. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, size_t len, ssize_t got, ssize_t want) {
        fprintf(stderr, "%s: len %zu: got %zd, want %zd\n", what, len, got, want);
        abort();
}

static bool header_equal(const ProxyHeader *a, const ProxyHeader *b) {
        if (a->version != b->version || a->command != b->command || a->has_addresses != b->has_addresses ||
            a->length != b->length)
                return false;
        return !a->has_addresses || (ipaddr_equal(&a->src, &b->src) && ipaddr_equal(&a->dst, &b->dst));
}

/* Parse exactly len bytes from a heap copy of that size. */
static ssize_t parse_exact(const uint8_t *data, size_t len, ProxyHeader *ret) {
        uint8_t *copy = malloc(len ? len : 1);
        ssize_t r;

        if (!copy)
                abort();
        memcpy(copy, data, len);
        memset(ret, 0xa5, sizeof(*ret));
        ProxyHeader sentinel;
        memset(&sentinel, 0xa5, sizeof(sentinel));
        r = proxy_header_parse(copy, len, ret);
        free(copy);

        switch (r) {
        case 0:
        case -EBADMSG:
        case -E2BIG:
        case -EPROTONOSUPPORT:
        case -EAFNOSUPPORT:
                if (memcmp(ret, &sentinel, sizeof(sentinel)) != 0)
                        fail("*ret written without a header", len, r, r);
                if (r == 0 && len >= PROXY_PARSE_MAX)
                        fail("undecided at PROXY_PARSE_MAX", len, r, -1);
                return r;
        default:
                if (r < 0)
                        fail("undocumented error", len, r, 0);
                break;
        }
        if ((size_t) r > len || ret->length != (size_t) r)
                fail("header length", len, r, (ssize_t) ret->length);
        if (ret->version != 1 && ret->version != 2)
                fail("version", len, r, ret->version);
        if (ret->version == 1 && (size_t) r > PROXY_V1_MAX)
                fail("v1 header longer than PROXY_V1_MAX", len, r, PROXY_V1_MAX);
        if (ret->command != PROXY_CMD_PROXY && ret->command != PROXY_CMD_LOCAL)
                fail("command", len, r, ret->command);
        if (ret->has_addresses) {
                const IpAddr *a[2] = { &ret->src, &ret->dst };
                for (int i = 0; i < 2; i++) {
                        unsigned width = a[i]->family == AF_INET ? 4 : 16;
                        if (a[i]->family != AF_INET && a[i]->family != AF_INET6)
                                fail("address family", len, r, a[i]->family);
                        if (a[i]->prefixlen != ipaddr_bits(a[i]->family))
                                fail("address prefixlen", len, r, a[i]->prefixlen);
                        for (unsigned j = width; j < 16; j++)
                                if (a[i]->bytes[j])
                                        fail("address bytes beyond the family", len, r, j);
                }
        }
        return r;
}

static void check_reencode(const ProxyHeader *h) {
        uint8_t buf[PROXY_HEADER_MAX > PROXY_V2_MAX ? PROXY_HEADER_MAX : PROXY_V2_MAX];

        for (int version = 1; version <= 2; version++) {
                const IpAddr *src = h->has_addresses ? &h->src : NULL, *dst = h->has_addresses ? &h->dst : NULL;
                ProxyHeader back;
                ssize_t n = proxy_encode_header(version, src, dst, buf, sizeof(buf));
                if (n <= 0)
                        fail("re-encoding failed", 0, n, version);
                if (parse_exact(buf, (size_t) n, &back) != n)
                        fail("re-encoded header does not parse", (size_t) n, back.version, version);
                if (back.version != version || back.has_addresses != h->has_addresses)
                        fail("re-encoded header parses differently", (size_t) n, back.has_addresses, h->has_addresses);
                if (h->has_addresses && (!ipaddr_equal(&back.src, &h->src) || !ipaddr_equal(&back.dst, &h->dst)))
                        fail("re-encoded addresses differ", (size_t) n, version, 0);
                /* too small a buffer is -ENOBUFS, never an overflow */
                if (proxy_encode_header(version, src, dst, buf, (size_t) n - 1) != -ENOBUFS)
                        fail("encoding into a short buffer", (size_t) n - 1, 0, -ENOBUFS);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        ProxyHeader h, hk;
        ssize_t r, rk;

        r = parse_exact(data, size, &h);

        /* incremental: 0 until decided, then the final answer (the same header) for every longer prefix */
        bool decided = false;
        for (size_t k = 0; k < size && k <= PROXY_PARSE_MAX; k++) {
                rk = parse_exact(data, k, &hk);
                if (rk == 0) {
                        if (decided)
                                fail("prefix undecided after a shorter one decided", k, rk, r);
                        continue;
                }
                decided = true;
                if (rk != r)
                        fail("prefix decides differently from the whole", k, rk, r);
                if (r > 0 && !header_equal(&hk, &h))
                        fail("prefix returns a different header", k, rk, r);
        }
        if (r == 0 && decided)
                fail("whole undecided after a prefix decided", size, r, r);

        if (r > 0)
                check_reencode(&h);
        return 0;
}
