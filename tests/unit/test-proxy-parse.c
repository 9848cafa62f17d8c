/* Unit tests: PROXY protocol header parser (v1 text, v2 binary) on valid, truncated, oversized and
 * garbage headers, a round trip with the encoder, and a property test on random bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "shared/ipaddr.h"
#include "shared/macro.h"
#include "shared/proxy.h"

static IpAddr ep(const char *s) {
        IpAddr a;
        bool w;

        if (ipaddr_parse_endpoint(s, &a, &w) < 0)
                fail_msg("bad fixture endpoint '%s'", s);
        return a;
}

static void assert_endpoint(const IpAddr *got, const char *want, const char *what) {
        char buf[IPADDR_STR_MAX];

        if (!streq(ipaddr_format_endpoint(got, buf), want))
                fail_msg("%s: got %s, want %s", what, buf, want);
        IpAddr w = ep(want);
        assert_true(ipaddr_equal(got, &w));
}

/* Field by field: struct padding is not compared. */
static void assert_header_equal(const ProxyHeader *a, const ProxyHeader *b) {
        assert_int_equal(a->version, b->version);
        assert_int_equal(a->command, b->command);
        assert_int_equal(a->has_addresses, b->has_addresses);
        assert_int_equal(a->length, b->length);
        if (a->has_addresses) {
                assert_true(ipaddr_equal(&a->src, &b->src));
                assert_true(ipaddr_equal(&a->dst, &b->dst));
        }
}

/* Every proper prefix of a valid header is "need more", the whole returns its length, and payload
 * after it is never counted. */
static void assert_valid(const uint8_t *h, size_t n, ProxyHeader *ret, const char *what) {
        uint8_t buf[PROXY_PARSE_MAX + 64];
        ProxyHeader tmp;
        ssize_t r;

        assert_true(n + 5 <= sizeof(buf));
        for (size_t k = 0; k < n; k++) {
                r = proxy_header_parse(h, k, &tmp);
                if (r != 0)
                        fail_msg("%s: prefix of %zu/%zu bytes returned %zd, want 0", what, k, n, r);
        }
        r = proxy_header_parse(h, n, ret);
        if (r != (ssize_t) n)
                fail_msg("%s: returned %zd, want %zu", what, r, n);
        assert_int_equal(ret->length, n);

        memcpy(buf, h, n);
        memcpy(buf + n, "hello", 5);
        r = proxy_header_parse(buf, n + 5, &tmp);
        if (r != (ssize_t) n)
                fail_msg("%s: with payload returned %zd, want %zu", what, r, n);
        assert_header_equal(&tmp, ret);
}

static const struct {
        const char *line, *src, *dst; /* src/dst NULL: no addresses (UNKNOWN) */
} v1_good[] = {
        { "PROXY TCP4 203.0.113.7 127.0.0.1 51234 7\r\n", "203.0.113.7:51234", "127.0.0.1:7" },
        { "PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", "0.0.0.0:0", "255.255.255.255:65535" },
        { "PROXY TCP4 10.0.0.1 10.0.0.2 1 10\r\n", "10.0.0.1:1", "10.0.0.2:10" },
        { "PROXY TCP6 2001:db8::7 ::1 1 65535\r\n", "[2001:db8::7]:1", "[::1]:65535" },
        { "PROXY TCP6 2001:DB8::A ::1 8080 7\r\n", "[2001:db8::a]:8080", "[::1]:7" },
        { "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
          "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535" },
        /* IPv4-mapped IPv6 becomes IPv4 (IpAddr convention), each side on its own */
        { "PROXY TCP6 ::ffff:192.0.2.1 ::1 1000 7\r\n", "192.0.2.1:1000", "[::1]:7" },
        { "PROXY TCP6 ::ffff:192.0.2.1 ::ffff:127.0.0.1 1000 7\r\n", "192.0.2.1:1000", "127.0.0.1:7" },
        { "PROXY TCP6 ::1.2.3.4 :: 1 2\r\n", "[::1.2.3.4]:1", "[::]:2" },
        { "PROXY UNKNOWN\r\n", NULL, NULL },
        /* "the receiver must ignore anything presented before the CRLF is found" */
        { "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", NULL, NULL },
        { "PROXY UNKNOWN \r\n", NULL, NULL },
};

static void test_v1_valid(void **state) {
        for (size_t i = 0; i < ELEMENTSOF(v1_good); i++) {
                ProxyHeader h;

                assert_valid((const uint8_t *) v1_good[i].line, strlen(v1_good[i].line), &h, v1_good[i].line);
                assert_int_equal(h.version, 1);
                assert_int_equal(h.command, PROXY_CMD_PROXY);
                assert_int_equal(h.has_addresses, v1_good[i].src != NULL);
                if (v1_good[i].src) {
                        assert_endpoint(&h.src, v1_good[i].src, v1_good[i].line);
                        assert_endpoint(&h.dst, v1_good[i].dst, v1_good[i].line);
                }
        }
}

static void test_v1_invalid(void **state) {
        static const struct {
                const char *line;
                ssize_t r;
        } table[] = {
                /* framing */
                { "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", -EBADMSG },
                { "PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", -EBADMSG },
                { "PROXY TCP4\r\n", -EBADMSG },
                { "PROXY \r\n", -EBADMSG },
                { "PROXY\r\n", -EBADMSG },
                { "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY UNKNOWNX\r\n", -EBADMSG },
                { "PROXY UNKNOWN\n", -EBADMSG },
                { "PROXY UNKNOWN x\ny\r\n", -EBADMSG },
                { "PROXY UNKNOWN x\ry\r\n", -EBADMSG },
                { "PROXY UNKNOWN\rX", -EBADMSG },
                /* ports */
                { "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 1 123456\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 0x10 2\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 1 2a\r\n", -EBADMSG },
                /* addresses valid for the family */
                { "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY TCP4 1.2.3.4 ::1 1 2\r\n", -EBADMSG },
                { "PROXY TCP4 ::ffff:1.2.3.4 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY TCP4 localhost 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY TCP4 1111111111111111 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY TCP6 1.2.3.4 ::1 1 2\r\n", -EBADMSG },
                { "PROXY TCP6 ::1 5.6.7.8 1 2\r\n", -EBADMSG },
                { "PROXY TCP6 ::g ::1 1 2\r\n", -EBADMSG },
                { "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", -EBADMSG },
                { "PROXY TCP6 [::1] ::1 1 2\r\n", -EBADMSG },
                { "PROXY TCP6 fe80::1%lo ::1 1 2\r\n", -EBADMSG },
                { "PROXY TCP6 ::1 ::1 1 2\r\n\r\n", 24 }, /* valid; what follows is payload */
        };
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                ProxyHeader h;
                ssize_t r = proxy_header_parse(table[i].line, strlen(table[i].line), &h);

                if (r != table[i].r)
                        fail_msg("'%s': got %zd, want %zd", table[i].line, r, table[i].r);
        }
}

/* v2 fixtures: the 16-byte fixed part, then the rest. */
static size_t v2(uint8_t *buf, uint8_t vc, uint8_t fam, const uint8_t *rest, size_t n) {
        memcpy(buf, proxy_v2_signature, PROXY_V2_SIGNATURE_LEN);
        buf[12] = vc;
        buf[13] = fam;
        buf[14] = (uint8_t) (n >> 8);
        buf[15] = (uint8_t) n;
        if (n)
                memcpy(buf + 16, rest, n);
        return 16 + n;
}

static const uint8_t v4_block[12] = { 203, 0, 113, 7, 127, 0, 0, 1, 0xC8, 0x22, 0x00, 0x07 };
static const uint8_t v6_block[36] = {
        0x20, 0x01, 0x0d, 0xb8, [15] = 7,       /* 2001:db8::7 */
        [31] = 1,                               /* ::1 */
        [32] = 0x00, 0x01, 0xff, 0xff,          /* 1, 65535 */
};
static const uint8_t mapped_block[36] = {
        [10] = 0xff, 0xff, 192, 0, 2, 1,        /* ::ffff:192.0.2.1 */
        [26] = 0xff, 0xff, 127, 0, 0, 1,        /* ::ffff:127.0.0.1 */
        [32] = 0x03, 0xe8, 0x00, 0x07,          /* 1000, 7 */
};

static void test_v2_valid(void **state) {
        const struct { /* automatic: compound literals below */
                const char *name;
                uint8_t vc, fam;
                const uint8_t *block;
                size_t blen;
                const uint8_t *tlvs;
                size_t tlen;
                ProxyCommand cmd;
                const char *src, *dst;
        } table[] = {
                { "ipv4", 0x21, 0x11, v4_block, 12, NULL, 0, PROXY_CMD_PROXY, "203.0.113.7:51234", "127.0.0.1:7" },
                { "ipv6", 0x21, 0x21, v6_block, 36, NULL, 0, PROXY_CMD_PROXY, "[2001:db8::7]:1", "[::1]:65535" },
                { "mapped", 0x21, 0x21, mapped_block, 36, NULL, 0, PROXY_CMD_PROXY, "192.0.2.1:1000", "127.0.0.1:7" },
                { "ipv4 + TLVs", 0x21, 0x11, v4_block, 12,
                  (const uint8_t[]) { 0x01, 0x00, 0x02, 'h', '2',       /* ALPN "h2" */
                                      0x04, 0x00, 0x00,                 /* NOOP, empty */
                                      0x05, 0x00, 0x03, 1, 2, 3,        /* UNIQUE_ID */
                                      0xE0, 0x00, 0x01, 0xAA },         /* custom range */
                  18, PROXY_CMD_PROXY, "203.0.113.7:51234", "127.0.0.1:7" },
                { "ipv6 + TLV", 0x21, 0x21, v6_block, 36, (const uint8_t[]) { 0x04, 0x00, 0x01, 0x00 }, 4,
                  PROXY_CMD_PROXY, "[2001:db8::7]:1", "[::1]:65535" },
                { "proxy unspec", 0x21, 0x00, NULL, 0, NULL, 0, PROXY_CMD_PROXY, NULL, NULL },
                { "proxy unspec + bytes", 0x21, 0x00, v4_block, 12, NULL, 0, PROXY_CMD_PROXY, NULL, NULL },
                { "local", 0x20, 0x00, NULL, 0, NULL, 0, PROXY_CMD_LOCAL, NULL, NULL },
                /* LOCAL: the address block is ignored, whatever the family says */
                { "local ipv4", 0x20, 0x11, v4_block, 12, NULL, 0, PROXY_CMD_LOCAL, NULL, NULL },
                { "local ipv4 short", 0x20, 0x11, NULL, 0, NULL, 0, PROXY_CMD_LOCAL, NULL, NULL },
                { "local udp6", 0x20, 0x22, v6_block, 36, NULL, 0, PROXY_CMD_LOCAL, NULL, NULL },
                { "local unix", 0x20, 0x31, NULL, 0, NULL, 0, PROXY_CMD_LOCAL, NULL, NULL },
        };
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                uint8_t rest[256], buf[PROXY_PARSE_MAX];
                ProxyHeader h;
                size_t n;

                memcpy(rest, table[i].block ? table[i].block : (const uint8_t *) "", table[i].blen);
                if (table[i].tlen)
                        memcpy(rest + table[i].blen, table[i].tlvs, table[i].tlen);
                n = v2(buf, table[i].vc, table[i].fam, rest, table[i].blen + table[i].tlen);

                assert_valid(buf, n, &h, table[i].name);
                assert_int_equal(h.version, 2);
                assert_int_equal(h.command, table[i].cmd);
                assert_int_equal(h.has_addresses, table[i].src != NULL);
                if (table[i].src) {
                        assert_endpoint(&h.src, table[i].src, table[i].name);
                        assert_endpoint(&h.dst, table[i].dst, table[i].name);
                }
        }
}

static void test_v2_local_unix_full(void **state) {
        uint8_t rest[216 + 8] = { 0 }, buf[PROXY_PARSE_MAX];
        ProxyHeader h;
        size_t n = v2(buf, 0x20, 0x31, rest, sizeof(rest));

        assert_valid(buf, n, &h, "local unix 216");
        assert_int_equal(h.command, PROXY_CMD_LOCAL);
        assert_false(h.has_addresses);
}

static void test_v2_invalid(void **state) {
        const struct { /* automatic: compound literals below */
                const char *name;
                uint8_t vc, fam;
                size_t n; /* length field; the bytes are zeros unless tlv is set */
                const uint8_t *tlv;
                size_t tlen;
                ssize_t r;
        } table[] = {
                { "version 1", 0x11, 0x11, 12, NULL, 0, -EPROTONOSUPPORT },
                { "version 3", 0x31, 0x11, 12, NULL, 0, -EPROTONOSUPPORT },
                { "version 0", 0x01, 0x11, 12, NULL, 0, -EPROTONOSUPPORT },
                { "command 2", 0x22, 0x11, 12, NULL, 0, -EPROTONOSUPPORT },
                { "command F", 0x2F, 0x11, 12, NULL, 0, -EPROTONOSUPPORT },
                { "family 4", 0x21, 0x41, 12, NULL, 0, -EBADMSG },
                { "family F", 0x21, 0xF1, 12, NULL, 0, -EBADMSG },
                { "transport 3", 0x21, 0x13, 12, NULL, 0, -EBADMSG },
                { "local family 4", 0x20, 0x41, 0, NULL, 0, -EBADMSG },
                { "local transport 3", 0x20, 0x03, 0, NULL, 0, -EBADMSG },
                { "udp4", 0x21, 0x12, 12, NULL, 0, -EAFNOSUPPORT },
                { "udp6", 0x21, 0x22, 36, NULL, 0, -EAFNOSUPPORT },
                { "unix stream", 0x21, 0x31, 216, NULL, 0, -EAFNOSUPPORT },
                { "unix dgram", 0x21, 0x32, 216, NULL, 0, -EAFNOSUPPORT },
                { "inet unspec", 0x21, 0x10, 12, NULL, 0, -EAFNOSUPPORT },
                { "unspec stream", 0x21, 0x01, 12, NULL, 0, -EAFNOSUPPORT },
                /* the length must cover the address block */
                { "ipv4 short", 0x21, 0x11, 11, NULL, 0, -EBADMSG },
                { "ipv4 empty", 0x21, 0x11, 0, NULL, 0, -EBADMSG },
                { "ipv6 short", 0x21, 0x21, 35, NULL, 0, -EBADMSG },
                { "ipv6 as ipv4", 0x21, 0x21, 12, NULL, 0, -EBADMSG },
                /* oversized */
                { "length cap+1", 0x21, 0x11, PROXY_V2_LEN_MAX + 1, NULL, 0, -E2BIG },
                { "local length cap+1", 0x20, 0x00, PROXY_V2_LEN_MAX + 1, NULL, 0, -E2BIG },
                /* TLVs must tile the rest of the block */
                { "tlv header cut", 0x21, 0x11, 14, (const uint8_t[]) { 0x04, 0x00 }, 2, -EBADMSG },
                { "tlv one byte", 0x21, 0x11, 13, (const uint8_t[]) { 0x04 }, 1, -EBADMSG },
                { "tlv value overruns", 0x21, 0x11, 17, (const uint8_t[]) { 0x04, 0x00, 0x03, 1, 2 }, 5, -EBADMSG },
                { "tlv value huge", 0x21, 0x11, 16, (const uint8_t[]) { 0x04, 0xFF, 0xFF, 1 }, 4, -EBADMSG },
                { "second tlv cut", 0x21, 0x11, 19,
                  (const uint8_t[]) { 0x04, 0x00, 0x01, 0, 0x04, 0x00, 0x01 }, 7, -EBADMSG },
        };
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                uint8_t rest[PROXY_V2_LEN_MAX + 1] = { 0 }, buf[PROXY_PARSE_MAX + 1];
                ProxyHeader h;
                size_t n;
                ssize_t r;

                if (table[i].fam == 0x11 && table[i].n >= 12)
                        memcpy(rest, v4_block, 12);
                if (table[i].tlen)
                        memcpy(rest + 12, table[i].tlv, table[i].tlen);
                n = v2(buf, table[i].vc, table[i].fam, rest, table[i].n);
                r = proxy_header_parse(buf, n, &h);
                if (r != table[i].r)
                        fail_msg("%s: got %zd, want %zd", table[i].name, r, table[i].r);
        }
}

/* Garbage is refused at the first byte that rules a header out, not after a timeout: the prefix
 * before it is "need more", the prefix including it an error. */
static void test_early_refusal(void **state) {
        static const struct {
                const char *bytes;
                size_t len, at; /* at: bytes needed to decide */
                ssize_t r;
        } table[] = {
                { "GET / HTTP/1.1\r\n", 16, 1, -EBADMSG },
                { "hello\n", 6, 1, -EBADMSG },
                { "\x16\x03\x01\x02\x00", 5, 1, -EBADMSG }, /* TLS ClientHello */
                { "\0\0\0\0", 4, 1, -EBADMSG },
                { "PROXZ TCP4", 10, 5, -EBADMSG },
                { "PROXY_TCP4", 10, 6, -EBADMSG },
                { "PROXY TCP5 ", 11, 10, -EBADMSG },
                { "PROXY TCP4 1.2.3.4  ", 20, 20, -EBADMSG },
                { "PROXY TCP4 x", 12, 12, -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 01", 29, 29, -EBADMSG },
                { "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r", 32, 32, -EBADMSG },
                { "PROXY TCP4 1234567890123456", 27, 27, -EBADMSG },
                { "\r\n\r\n\0\r\nQUITX", 12, 12, -EBADMSG },
                { "\r\nGET", 5, 3, -EBADMSG },
                { "\r\n\r\n\0\r\nQUIT\n\x11", 13, 13, -EPROTONOSUPPORT },
                { "\r\n\r\n\0\r\nQUIT\n\x23", 13, 13, -EPROTONOSUPPORT },
                { "\r\n\r\n\0\r\nQUIT\n\x21\x31", 14, 14, -EAFNOSUPPORT },
                { "\r\n\r\n\0\r\nQUIT\n\x21\x51", 14, 14, -EBADMSG },
                { "\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff", 16, 16, -E2BIG },
                { "\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0b", 16, 16, -EBADMSG },
        };
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                ProxyHeader h;
                ssize_t r;

                for (size_t k = 0; k < table[i].at; k++) {
                        r = proxy_header_parse(table[i].bytes, k, &h);
                        if (r != 0)
                                fail_msg("#%zu: %zu bytes returned %zd, want 0", i, k, r);
                }
                for (size_t k = table[i].at; k <= table[i].len; k++) {
                        r = proxy_header_parse(table[i].bytes, k, &h);
                        if (r != table[i].r)
                                fail_msg("#%zu: %zu bytes returned %zd, want %zd", i, k, r, table[i].r);
                }
        }
}

static void test_v1_oversized(void **state) {
        char line[PROXY_PARSE_MAX];
        ProxyHeader h;
        size_t n;

        /* "PROXY UNKNOWN " + filler: a CRLF ending at byte 107 is the longest valid line */
        n = (size_t) snprintf(line, sizeof(line), "PROXY UNKNOWN ");
        memset(line + n, 'x', sizeof(line) - n);
        memcpy(line + PROXY_V1_MAX - 2, "\r\n", 2);
        assert_valid((const uint8_t *) line, PROXY_V1_MAX, &h, "107-byte UNKNOWN");
        assert_false(h.has_addresses);

        /* one byte more: the CRLF ends at 108 */
        memcpy(line + PROXY_V1_MAX - 2, "x\r\n", 3);
        assert_int_equal(proxy_header_parse(line, PROXY_V1_MAX - 1, &h), 0);
        assert_int_equal(proxy_header_parse(line, PROXY_V1_MAX, &h), -E2BIG);
        assert_int_equal(proxy_header_parse(line, PROXY_V1_MAX + 1, &h), -E2BIG);
        assert_int_equal(proxy_header_parse(line, sizeof(line), &h), -E2BIG);

        /* TCP6 with the longest textual addresses (45 chars) cannot fit in 107 bytes */
        n = (size_t) snprintf(line, sizeof(line), "PROXY TCP6 %s %s 65535 65535\r\n",
                              "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
                              "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255");
        assert_true(n > PROXY_V1_MAX);
        assert_int_equal(proxy_header_parse(line, PROXY_V1_MAX - 1, &h), 0);
        assert_int_equal(proxy_header_parse(line, n, &h), -E2BIG);
}

static void test_v2_length_cap(void **state) {
        uint8_t rest[PROXY_V2_LEN_MAX] = { 0 }, buf[PROXY_PARSE_MAX + 1];
        ProxyHeader h;
        size_t n;

        /* exactly the cap, as one big NOOP TLV after IPv4 addresses */
        memcpy(rest, v4_block, 12);
        rest[12] = 0x04;
        rest[13] = (uint8_t) ((PROXY_V2_LEN_MAX - 15) >> 8);
        rest[14] = (uint8_t) (PROXY_V2_LEN_MAX - 15);
        n = v2(buf, 0x21, 0x11, rest, PROXY_V2_LEN_MAX);
        assert_int_equal(n, PROXY_PARSE_MAX);
        assert_valid(buf, n, &h, "at the cap");
        assert_endpoint(&h.src, "203.0.113.7:51234", "at the cap");

        buf[14] = 0xff;
        buf[15] = 0xff;
        assert_int_equal(proxy_header_parse(buf, 16, &h), -E2BIG);
        assert_int_equal(proxy_header_parse(buf, 15, &h), 0);
}

static void test_roundtrip(void **state) {
        static const struct {
                const char *src, *dst;
        } table[] = {
                { "203.0.113.7:51234", "127.0.0.1:7" },
                { "127.0.0.2:1", "127.0.0.1:65535" },
                { "0.0.0.0:0", "255.255.255.255:65535" },
                { "[2001:db8::7]:1", "[::1]:7" },
                { "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[::]:0" },
                { "192.0.2.1:1000", "[::1]:7" }, /* mixed: sent as TCP6 with a mapped side */
                { "[::1]:7", "192.0.2.1:1000" },
        };
        for (int version = 1; version <= 2; version++) {
                for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                        IpAddr s = ep(table[i].src), d = ep(table[i].dst);
                        uint8_t buf[PROXY_HEADER_MAX];
                        ProxyHeader h;
                        ssize_t n = proxy_encode_header(version, &s, &d, buf, sizeof(buf));

                        assert_true(n > 0);
                        assert_valid(buf, (size_t) n, &h, table[i].src);
                        assert_int_equal(h.version, version);
                        assert_int_equal(h.command, PROXY_CMD_PROXY);
                        assert_true(h.has_addresses);
                        assert_endpoint(&h.src, table[i].src, table[i].src);
                        assert_endpoint(&h.dst, table[i].dst, table[i].dst);
                }

                uint8_t buf[PROXY_HEADER_MAX];
                ProxyHeader h;
                ssize_t n = proxy_encode_header(version, NULL, NULL, buf, sizeof(buf));

                assert_true(n > 0);
                assert_valid(buf, (size_t) n, &h, "no addresses");
                assert_false(h.has_addresses);
                assert_int_equal(h.command, version == 1 ? PROXY_CMD_PROXY : PROXY_CMD_LOCAL);
        }
}

/* xorshift64*: deterministic, so a failure reproduces. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void) {
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * 0x2545F4914F6CDD1Dull;
}

/* Properties the master relies on: never a crash or an overread (ASan), a positive return never
 * beyond len and equal to ret->length, a decision once made never changes as more bytes arrive,
 * and a full buffer always decides. */
static void check_properties(const uint8_t *buf, size_t len) {
        ProxyHeader full = { 0 }, part;
        ssize_t r = proxy_header_parse(buf, len, &full);

        assert_true(r <= (ssize_t) len);
        assert_true(r == 0 || r > 0 || r == -EBADMSG || r == -E2BIG || r == -EPROTONOSUPPORT ||
                    r == -EAFNOSUPPORT);
        if (r > 0) {
                assert_int_equal(full.length, (size_t) r);
                assert_true((size_t) r >= 15);
        }
        if (len >= PROXY_PARSE_MAX)
                assert_true(r != 0);

        for (int i = 0; i < 4 && len > 0; i++) {
                size_t k = (size_t) (rng() % len);
                ssize_t rk = proxy_header_parse(buf, k, &part);

                if (rk == 0)
                        continue;
                if (rk != r)
                        fail_msg("%zu of %zu bytes decided %zd, all of them %zd", k, len, rk, r);
                if (rk > 0)
                        assert_header_equal(&part, &full);
        }
}

static void test_random_bytes(void **state) {
        static const char *const seeds[] = {
                "PROXY TCP4 203.0.113.7 127.0.0.1 51234 7\r\n",
                "PROXY TCP6 2001:db8::7 ::ffff:1.2.3.4 1 65535\r\n",
                "PROXY UNKNOWN\r\n",
        };
        static const char alphabet[] = "PROXY TCP46UNKNOW0123456789abcdefABCDEF.:\r\n \t";
        uint8_t buf[PROXY_PARSE_MAX + 16];

        for (unsigned iter = 0; iter < 200000; iter++) {
                size_t len = (size_t) (rng() % 128);
                unsigned kind = (unsigned) (rng() % 6);

                if (iter % 64 == 0)
                        len = (size_t) (rng() % sizeof(buf));
                for (size_t i = 0; i < len; i++)
                        buf[i] = (uint8_t) rng();
                switch (kind) {
                case 0: /* pure noise */
                        break;
                case 1: /* v1-looking text */
                        for (size_t i = 0; i < len; i++)
                                buf[i] = (uint8_t) alphabet[rng() % (sizeof(alphabet) - 1)];
                        memcpy(buf, "PROXY ", MIN(len, (size_t) 6));
                        break;
                case 2: /* v2 signature, random rest, a small length field */
                        memcpy(buf, proxy_v2_signature, MIN(len, (size_t) PROXY_V2_SIGNATURE_LEN));
                        if (len > 12 && rng() % 2)
                                buf[12] = 0x20 | (uint8_t) (rng() % 2);
                        if (len > 13 && rng() % 2)
                                buf[13] = (uint8_t[]) { 0x00, 0x11, 0x21, 0x31 }[rng() % 4];
                        if (len > 15 && rng() % 2) {
                                buf[14] = 0;
                                buf[15] = (uint8_t) (rng() % 64);
                        }
                        break;
                default: { /* a valid header with a few bytes mutated */
                        uint8_t h[PROXY_HEADER_MAX];
                        size_t n;

                        if (kind == 5) {
                                IpAddr s = ep("[2001:db8::7]:1"), d = ep("127.0.0.1:7");
                                n = (size_t) proxy_encode_v2(rng() % 2 ? &s : &d, &d, h, sizeof(h));
                        } else {
                                const char *seed = seeds[rng() % ELEMENTSOF(seeds)];
                                n = strlen(seed);
                                memcpy(h, seed, n);
                        }
                        memcpy(buf, h, MIN(len, n));
                        for (unsigned m = (unsigned) (rng() % 3); m > 0 && len > 0; m--)
                                buf[rng() % len] = (uint8_t) rng();
                        break;
                }
                }
                check_properties(buf, len);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_v1_valid),
                cmocka_unit_test(test_v1_invalid),
                cmocka_unit_test(test_v2_valid),
                cmocka_unit_test(test_v2_local_unix_full),
                cmocka_unit_test(test_v2_invalid),
                cmocka_unit_test(test_early_refusal),
                cmocka_unit_test(test_v1_oversized),
                cmocka_unit_test(test_v2_length_cap),
                cmocka_unit_test(test_roundtrip),
                cmocka_unit_test(test_random_bytes),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
