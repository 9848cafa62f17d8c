/* Numeric IPv4/IPv6 endpoints and prefixes: parse, format, mask, convert to and from sockaddr. */
#include "shared/ipaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/macro.h"

static int parse_uint(const char *s, unsigned long max, unsigned long *ret) {
        unsigned long v = 0;

        if (!*s)
                return -EINVAL;
        for (const char *p = s; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                v = v * 10 + (unsigned long) (*p - '0');
                if (v > max)
                        return -ERANGE;
        }
        *ret = v;
        return 0;
}

static int parse_host(const char *s, IpAddr *ret) {
        IpAddr a = { 0 };

        if (inet_pton(AF_INET, s, a.bytes) == 1) {
                a.family = AF_INET;
                a.prefixlen = 32;
        } else if (inet_pton(AF_INET6, s, a.bytes) == 1) {
                a.family = AF_INET6;
                a.prefixlen = 128;
                static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
                if (memcmp(a.bytes, mapped, sizeof(mapped)) == 0) { /* no cast: bytes is not aligned */
                        memmove(a.bytes, a.bytes + 12, 4);
                        memset(a.bytes + 4, 0, 12);
                        a.family = AF_INET;
                        a.prefixlen = 32;
                }
        } else
                return -EINVAL;
        *ret = a;
        return 0;
}

int ipaddr_parse_endpoint(const char *s, IpAddr *ret, bool *ret_wildcard) {
        char host[INET6_ADDRSTRLEN + 1];
        const char *colon, *hstart, *hend;
        unsigned long port;
        bool wildcard = false;
        IpAddr a = { 0 };
        int r;

        if (s[0] == '[') {
                hstart = s + 1;
                hend = strchr(hstart, ']');
                if (!hend || hend[1] != ':')
                        return -EINVAL;
                colon = hend + 1;
        } else {
                colon = strrchr(s, ':');
                if (!colon || memchr(s, ':', (size_t) (colon - s)))
                        return -EINVAL; /* bare IPv6 needs brackets */
                hstart = s;
                hend = colon;
        }
        if ((size_t) (hend - hstart) >= sizeof(host) || hend == hstart)
                return -EINVAL;
        memcpy(host, hstart, (size_t) (hend - hstart));
        host[hend - hstart] = 0;

        r = parse_uint(colon + 1, 65535, &port);
        if (r < 0)
                return r;

        if (streq(host, "*") && s[0] != '[') {
                wildcard = true;
                a.family = AF_INET;
                a.prefixlen = 32;
        } else {
                r = parse_host(host, &a);
                if (r < 0)
                        return r;
                /* "[1.2.3.4]:7" is not a thing, and "::ffff:1.2.3.4" must be written as IPv4 */
                if ((s[0] == '[') != (a.family == AF_INET6))
                        return -EINVAL;
        }
        a.port = (uint16_t) port;
        *ret = a;
        if (ret_wildcard)
                *ret_wildcard = wildcard;
        return 0;
}

int ipaddr_parse_prefix(const char *s, IpAddr *ret) {
        char host[INET6_ADDRSTRLEN + 1];
        const char *slash = strchr(s, '/');
        size_t hlen = slash ? (size_t) (slash - s) : strlen(s);
        unsigned long plen;
        IpAddr a, masked;
        int r;

        if (hlen == 0 || hlen >= sizeof(host))
                return -EINVAL;
        memcpy(host, s, hlen);
        host[hlen] = 0;
        r = parse_host(host, &a);
        if (r < 0)
                return r;
        if (slash) {
                r = parse_uint(slash + 1, 255, &plen);
                if (r < 0)
                        return -EINVAL;
                /* a mapped address was written as IPv6: its prefix counts the 96 mapping bits */
                if (a.family == AF_INET && strchr(host, ':')) {
                        if (plen < 96)
                                return -ERANGE;
                        plen -= 96;
                }
                if (plen > ipaddr_bits(a.family))
                        return -ERANGE;
        } else
                plen = ipaddr_bits(a.family);

        masked = a;
        ipaddr_mask(&masked, (unsigned) plen);
        *ret = masked;
        if (memcmp(masked.bytes, a.bytes, sizeof(a.bytes)) != 0)
                return -EDOM;
        return 0;
}

int ipaddr_from_sockaddr(const struct sockaddr *sa, socklen_t len, IpAddr *ret) {
        IpAddr a = { 0 };

        if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
                a.family = AF_INET;
                a.prefixlen = 32;
                a.port = ntohs(in->sin_port);
                memcpy(a.bytes, &in->sin_addr, 4);
        } else if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;
                a.port = ntohs(in6->sin6_port);
                if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
                        a.family = AF_INET;
                        a.prefixlen = 32;
                        memcpy(a.bytes, in6->sin6_addr.s6_addr + 12, 4);
                } else {
                        a.family = AF_INET6;
                        a.prefixlen = 128;
                        memcpy(a.bytes, &in6->sin6_addr, 16);
                }
        } else
                return -EAFNOSUPPORT;
        *ret = a;
        return 0;
}

socklen_t ipaddr_to_sockaddr(const IpAddr *a, SockAddr *ret) {
        *ret = (SockAddr) { 0 };
        if (a->family == AF_INET) {
                ret->in.sin_family = AF_INET;
                ret->in.sin_port = htons(a->port);
                memcpy(&ret->in.sin_addr, a->bytes, 4);
                return sizeof(ret->in);
        }
        ret->in6.sin6_family = AF_INET6;
        ret->in6.sin6_port = htons(a->port);
        memcpy(&ret->in6.sin6_addr, a->bytes, 16);
        return sizeof(ret->in6);
}

void ipaddr_mask(IpAddr *a, unsigned prefixlen) {
        unsigned bits = ipaddr_bits(a->family);

        if (prefixlen > bits)
                prefixlen = bits;
        for (unsigned i = 0; i < 16; i++) {
                unsigned keep = prefixlen > i * 8 ? prefixlen - i * 8 : 0;
                if (keep >= 8)
                        continue;
                a->bytes[i] &= (uint8_t) (0xff00u >> keep);
        }
        a->prefixlen = (uint8_t) prefixlen;
        a->port = 0;
}

bool ipaddr_prefix_contains(const IpAddr *p, const IpAddr *a) {
        IpAddr m;

        if (p->family != a->family)
                return false;
        m = *a;
        ipaddr_mask(&m, p->prefixlen);
        return memcmp(m.bytes, p->bytes, sizeof(m.bytes)) == 0;
}

bool ipaddr_equal(const IpAddr *a, const IpAddr *b) {
        return a->family == b->family && a->port == b->port && a->prefixlen == b->prefixlen &&
               memcmp(a->bytes, b->bytes, sizeof(a->bytes)) == 0;
}

static const char *format_host(const IpAddr *a, char *buf, socklen_t size) {
        if (!inet_ntop(a->family, a->bytes, buf, size))
                snprintf(buf, size, "?");
        return buf;
}

const char *ipaddr_format_host(const IpAddr *a, char *buf) {
        return format_host(a, buf, IPADDR_STR_MAX);
}

const char *ipaddr_format_endpoint(const IpAddr *a, char *buf) {
        char host[INET6_ADDRSTRLEN];

        format_host(a, host, sizeof(host));
        snprintf(buf, IPADDR_STR_MAX, a->family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, a->port);
        return buf;
}

const char *ipaddr_format_prefix(const IpAddr *a, char *buf) {
        char host[INET6_ADDRSTRLEN];

        format_host(a, host, sizeof(host));
        snprintf(buf, IPADDR_STR_MAX, "%s/%u", host, a->prefixlen);
        return buf;
}
