/* PROXY protocol header encoder (HAProxy proxy-protocol.txt, sections 2.1 and 2.2). */
#include "shared/proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

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
