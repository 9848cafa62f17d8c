/* PROXY protocol header encoder and parser (HAProxy proxy-protocol.txt, sections 2.1 and 2.2). */
#include "shared/proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "shared/macro.h"

const uint8_t proxy_v2_signature[PROXY_V2_SIGNATURE_LEN] = {
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
};

/* Bring src and dst to one family: equal families stay, otherwise IPv4 becomes ::ffff:a.b.c.d. */
static int proxy_pair(const IpAddr *src, const IpAddr *dst, IpAddr *ret_src, IpAddr *ret_dst) {
        const IpAddr *in[2] = { src, dst };
        IpAddr *out[2] = { ret_src, ret_dst };

        for (size_t i = 0; i < 2; i++)
                if (!(in[i]->family == AF_INET || in[i]->family == AF_INET6))
                        return -EAFNOSUPPORT;

        for (size_t i = 0; i < 2; i++) {
                *out[i] = *in[i];
                if (src->family != dst->family && in[i]->family == AF_INET) {
                        out[i]->family = AF_INET6;
                        memset(out[i]->bytes, 0, 10);
                        out[i]->bytes[10] = out[i]->bytes[11] = 0xff;
                        memcpy(out[i]->bytes + 12, in[i]->bytes, 4);
                }
        }
        return 0;
}

ssize_t proxy_encode_v1(const IpAddr *src, const IpAddr *dst, void *buf, size_t size) {
        char line[PROXY_V1_MAX + 1], s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
        IpAddr a, b;
        int n, r;

        if (!src != !dst)
                return -EINVAL;
        if (!src)
                n = snprintf(line, sizeof(line), "PROXY UNKNOWN\r\n");
        else {
                r = proxy_pair(src, dst, &a, &b);
                if (r < 0)
                        return r;
                if (!inet_ntop(a.family, a.bytes, s, sizeof(s)) || !inet_ntop(b.family, b.bytes, d, sizeof(d)))
                        return -EAFNOSUPPORT;
                n = snprintf(line, sizeof(line), "PROXY %s %s %s %u %u\r\n",
                             a.family == AF_INET ? "TCP4" : "TCP6", s, d, (unsigned) a.port, (unsigned) b.port);
        }
        if (n < 0 || (size_t) n >= sizeof(line))
                return -EINVAL; /* cannot happen: the longest line fits */
        if ((size_t) n > size)
                return -ENOBUFS;
        memcpy(buf, line, (size_t) n);
        return n;
}

ssize_t proxy_encode_v2(const IpAddr *src, const IpAddr *dst, void *buf, size_t size) {
        uint8_t h[PROXY_V2_MAX];
        size_t alen = 0;
        IpAddr a, b;
        int r;

        if (!src != !dst)
                return -EINVAL;

        memcpy(h, proxy_v2_signature, PROXY_V2_SIGNATURE_LEN);
        if (!src) {
                h[12] = 0x20; /* version 2, LOCAL */
                h[13] = 0x00; /* AF_UNSPEC, UNSPEC */
        } else {
                r = proxy_pair(src, dst, &a, &b);
                if (r < 0)
                        return r;
                size_t al = a.family == AF_INET ? 4 : 16;
                uint8_t *p = h + PROXY_V2_FIXED_LEN;

                h[12] = 0x21;                                  /* version 2, PROXY */
                h[13] = a.family == AF_INET ? 0x11 : 0x21;     /* TCP over IPv4 / IPv6 */
                memcpy(p, a.bytes, al);
                memcpy(p + al, b.bytes, al);
                p[2 * al] = (uint8_t) (a.port >> 8);
                p[2 * al + 1] = (uint8_t) a.port;
                p[2 * al + 2] = (uint8_t) (b.port >> 8);
                p[2 * al + 3] = (uint8_t) b.port;
                alen = 2 * al + 4;
        }
        h[14] = (uint8_t) (alen >> 8);
        h[15] = (uint8_t) alen;

        if (PROXY_V2_FIXED_LEN + alen > size)
                return -ENOBUFS;
        memcpy(buf, h, PROXY_V2_FIXED_LEN + alen);
        return (ssize_t) (PROXY_V2_FIXED_LEN + alen);
}

ssize_t proxy_encode_header(int version, const IpAddr *src, const IpAddr *dst, void *buf, size_t size) {
        switch (version) {
        case 1:
                return proxy_encode_v1(src, dst, buf, size);
        case 2:
                return proxy_encode_v2(src, dst, buf, size);
        default:
                return -EINVAL;
        }
}

/* ---- parser ---- */

static const char proxy_v1_prefix[] = "PROXY ";
#define PROXY_V1_PREFIX_LEN (sizeof(proxy_v1_prefix) - 1)

/* Longest address tokens inet_pton accepts: "255.255.255.255", "ffff:...:ffff:255.255.255.255". */
#define V1_ADDR4_MAX 15
#define V1_ADDR6_MAX 45
#define V1_PORT_MAX 5

/* IpAddr.bytes is only 2-byte aligned: compare bytes rather than cast to struct in6_addr. */
static void addr_normalise(IpAddr *a) {
        static const uint8_t mapped[12] = { [10] = 0xff, [11] = 0xff };

        if (a->family == AF_INET6 && memcmp(a->bytes, mapped, sizeof(mapped)) == 0) {
                memmove(a->bytes, a->bytes + 12, 4);
                memset(a->bytes + 4, 0, 12);
                a->family = AF_INET;
        }
        a->prefixlen = (uint8_t) ipaddr_bits(a->family);
}

static bool v1_addr_char(int family, char c) {
        if ((c >= '0' && c <= '9') || c == '.')
                return true;
        return family == AF_INET6 && (c == ':' || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'));
}

static int v1_parse_addr(int family, const char *p, size_t n, IpAddr *ret) {
        char s[V1_ADDR6_MAX + 1];
        IpAddr a = { .family = (uint8_t) family };

        if (n == 0 || n >= sizeof(s))
                return -EBADMSG;
        memcpy(s, p, n);
        s[n] = 0;
        if (inet_pton(family, s, a.bytes) != 1) /* glibc refuses IPv4 with leading zeros */
                return -EBADMSG;
        addr_normalise(&a);
        *ret = a;
        return 0;
}

static int v1_parse_port(const char *p, size_t n, uint16_t *ret) {
        unsigned v = 0;

        if (n == 0 || n > V1_PORT_MAX || (p[0] == '0' && n > 1))
                return -EBADMSG;
        for (size_t i = 0; i < n; i++)
                v = v * 10 + (unsigned) (p[i] - '0'); /* digits were checked while scanning */
        if (v > 65535)
                return -EBADMSG;
        *ret = (uint16_t) v;
        return 0;
}

/* "PROXY UNKNOWN" then CRLF, or a space and anything without CR or LF up to CRLF. */
static ssize_t v1_parse_unknown(const char *p, size_t len, size_t n, ProxyHeader *ret) {
        size_t pos = PROXY_V1_PREFIX_LEN + strlen("UNKNOWN");

        if (pos < n && p[pos] != '\r' && p[pos] != ' ')
                return -EBADMSG;
        for (; pos < n; pos++) {
                if (p[pos] == '\n')
                        return -EBADMSG;
                if (p[pos] != '\r')
                        continue;
                if (pos + 1 >= n)
                        break;
                if (p[pos + 1] != '\n')
                        return -EBADMSG;
                *ret = (ProxyHeader) { .version = 1, .command = PROXY_CMD_PROXY, .length = pos + 2 };
                return (ssize_t) (pos + 2);
        }
        return len >= PROXY_V1_MAX ? -E2BIG : 0;
}

/* "PROXY TCP4 src dst sport dport\r\n": every byte is checked as it arrives, so a prefix that
 * cannot become a valid line is refused at once. */
static ssize_t v1_parse_tcp(const char *p, size_t len, size_t n, int family, ProxyHeader *ret) {
        size_t amax = family == AF_INET ? V1_ADDR4_MAX : V1_ADDR6_MAX;
        size_t pos = PROXY_V1_PREFIX_LEN + strlen("TCP4 ");
        ProxyHeader h = { .version = 1, .command = PROXY_CMD_PROXY, .has_addresses = true };
        int r;

        for (unsigned field = 0; field < 4; field++) {
                bool is_port = field >= 2;
                size_t start = pos, max = is_port ? V1_PORT_MAX : amax;
                char delim = field == 3 ? '\r' : ' ';

                for (; pos < n && p[pos] != delim; pos++) {
                        bool ok = is_port ? (p[pos] >= '0' && p[pos] <= '9') : v1_addr_char(family, p[pos]);
                        if (!ok || pos - start >= max || (is_port && pos > start && p[start] == '0'))
                                return -EBADMSG;
                }
                if (pos >= n)
                        return len >= PROXY_V1_MAX ? -E2BIG : 0;

                switch (field) {
                case 0:
                        r = v1_parse_addr(family, p + start, pos - start, &h.src);
                        break;
                case 1:
                        r = v1_parse_addr(family, p + start, pos - start, &h.dst);
                        break;
                case 2:
                        r = v1_parse_port(p + start, pos - start, &h.src.port);
                        break;
                default:
                        r = v1_parse_port(p + start, pos - start, &h.dst.port);
                        break;
                }
                if (r < 0)
                        return r;
                pos++; /* the delimiter */
        }
        if (pos >= n)
                return len >= PROXY_V1_MAX ? -E2BIG : 0;
        if (p[pos] != '\n')
                return -EBADMSG;
        h.length = pos + 1;
        *ret = h;
        return (ssize_t) h.length;
}

static ssize_t proxy_parse_v1(const char *p, size_t len, ProxyHeader *ret) {
        static const struct {
                const char *word;
                int family; /* AF_UNSPEC: UNKNOWN */
        } protos[] = {
                { "TCP4 ", AF_INET },
                { "TCP6 ", AF_INET6 },
                { "UNKNOWN", AF_UNSPEC },
        };
        size_t n = MIN(len, (size_t) PROXY_V1_MAX), have;
        bool maybe = false;

        if (memcmp(p, proxy_v1_prefix, MIN(n, PROXY_V1_PREFIX_LEN)) != 0)
                return -EBADMSG;
        if (n <= PROXY_V1_PREFIX_LEN)
                return 0;

        have = n - PROXY_V1_PREFIX_LEN;
        for (size_t i = 0; i < ELEMENTSOF(protos); i++) {
                size_t wl = strlen(protos[i].word);

                if (memcmp(p + PROXY_V1_PREFIX_LEN, protos[i].word, MIN(have, wl)) != 0)
                        continue;
                if (have < wl) {
                        maybe = true;
                        continue;
                }
                if (protos[i].family == AF_UNSPEC)
                        return v1_parse_unknown(p, len, n, ret);
                return v1_parse_tcp(p, len, n, protos[i].family, ret);
        }
        return maybe ? 0 : -EBADMSG;
}

/* Byte 12: version (high nibble) and command; byte 13: family and transport. Checked as soon as
 * each byte is there. */
static int v2_check_command(uint8_t vc) {
        if ((vc >> 4) != 2)
                return -EPROTONOSUPPORT;
        if ((vc & 0xf) > 1)
                return -EPROTONOSUPPORT;
        return 0;
}

/* Returns the address block length the family needs, or -errno. */
static int v2_check_family(uint8_t vc, uint8_t fam) {
        uint8_t af = fam >> 4, tp = fam & 0xf;

        if (af > 3 || tp > 2)
                return -EBADMSG; /* "unspecified ... must be rejected as invalid by receivers" */
        if ((vc & 0xf) == 0)
                return 0; /* LOCAL: the address block is ignored */
        if (fam == 0x00)
                return 0; /* PROXY over UNSPEC: use the socket addresses */
        if (fam == 0x11)
                return 12;
        if (fam == 0x21)
                return 36;
        return -EAFNOSUPPORT; /* UNIX, UDP, or one half UNSPEC */
}

static ssize_t proxy_parse_v2(const uint8_t *p, size_t len, ProxyHeader *ret) {
        ProxyHeader h = { .version = 2 };
        size_t plen, total, off;
        int r, alen;

        if (memcmp(p, proxy_v2_signature, MIN(len, (size_t) PROXY_V2_SIGNATURE_LEN)) != 0)
                return -EBADMSG;
        if (len > 12) {
                r = v2_check_command(p[12]);
                if (r < 0)
                        return r;
        }
        if (len <= 13)
                return 0;
        alen = v2_check_family(p[12], p[13]);
        if (alen < 0)
                return alen;
        if (len < PROXY_V2_FIXED_LEN)
                return 0;

        plen = (size_t) p[14] << 8 | p[15];
        if (plen > PROXY_V2_LEN_MAX)
                return -E2BIG;
        if (plen < (size_t) alen)
                return -EBADMSG;
        total = PROXY_V2_FIXED_LEN + plen;
        if (len < total)
                return 0;

        h.length = total;
        h.command = (p[12] & 0xf) == 1 ? PROXY_CMD_PROXY : PROXY_CMD_LOCAL;
        if (h.command == PROXY_CMD_LOCAL || alen == 0) {
                *ret = h;
                return (ssize_t) total;
        }

        const uint8_t *a = p + PROXY_V2_FIXED_LEN;
        size_t al = alen == 12 ? 4 : 16;

        h.has_addresses = true;
        h.src.family = h.dst.family = al == 4 ? AF_INET : AF_INET6;
        memcpy(h.src.bytes, a, al);
        memcpy(h.dst.bytes, a + al, al);
        h.src.port = (uint16_t) (a[2 * al] << 8 | a[2 * al + 1]);
        h.dst.port = (uint16_t) (a[2 * al + 2] << 8 | a[2 * al + 3]);
        addr_normalise(&h.src);
        addr_normalise(&h.dst);

        /* TLVs: type (1), length (2, big endian), value; skipped, but they must tile the rest. */
        for (off = (size_t) alen; off < plen;) {
                if (plen - off < 3)
                        return -EBADMSG;
                off += 3 + ((size_t) a[off + 1] << 8 | a[off + 2]);
                if (off > plen)
                        return -EBADMSG;
        }
        *ret = h;
        return (ssize_t) total;
}

ssize_t proxy_header_parse(const void *buf, size_t len, ProxyHeader *ret) {
        const uint8_t *p = buf;

        if (len == 0)
                return 0;
        if (p[0] == (uint8_t) proxy_v1_prefix[0])
                return proxy_parse_v1(buf, len, ret);
        if (p[0] == proxy_v2_signature[0])
                return proxy_parse_v2(p, len, ret);
        return -EBADMSG;
}

int proxy_header_read(int fd, ProxyReader *r, ProxyHeader *ret) {
        uint8_t buf[PROXY_PARSE_MAX];
        ProxyHeader h;
        ssize_t n, len;

        if (r->len > 0)
                memcpy(buf, r->held, r->len);
        n = recv(fd, buf + r->len, sizeof(buf) - r->len, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0)
                return errno == EAGAIN || errno == EINTR ? 0 : negative_errno();
        if (n == 0)
                return -ECONNRESET;
        len = proxy_header_parse(buf, r->len + (size_t) n, &h);
        if (len < 0)
                return (int) len;
        if (len == 0) {
                if (!r->held && !(r->held = malloc(PROXY_PARSE_MAX)))
                        return -ENOMEM;
                if (recv(fd, r->held + r->len, (size_t) n, MSG_DONTWAIT) != n)
                        return -EIO;
                r->len += (size_t) n;
                return 0;
        }
        size_t rest = (size_t) len - r->len;
        if (rest > 0 && recv(fd, buf, rest, MSG_DONTWAIT) != (ssize_t) rest)
                return -EIO;
        proxy_reader_done(r);
        *ret = h;
        return (int) len;
}

void proxy_reader_done(ProxyReader *r) {
        r->held = mfree(r->held);
        r->len = 0;
}
