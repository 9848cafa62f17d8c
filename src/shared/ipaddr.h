/* Numeric IPv4/IPv6 endpoints and prefixes: parse, format, mask, convert to and from sockaddr. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <netinet/in.h>

/* A compact address (20 bytes) used for listeners, peers, source groups and CIDRs.
 * IPv4-mapped IPv6 addresses are always stored as IPv4. */
typedef struct IpAddr {
        uint8_t family;    /* AF_INET or AF_INET6 */
        uint8_t prefixlen; /* for prefixes; 32/128 for a host */
        uint16_t port;     /* host byte order; 0 when unused */
        uint8_t bytes[16]; /* network byte order; IPv4 uses the first 4 */
} IpAddr;

typedef union SockAddr {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
        struct sockaddr_storage storage;
} SockAddr;

/* "[::ffff:1.2.3.4]:65535" and "ffff:...:ffff/128" both fit. */
#define IPADDR_STR_MAX 64

static inline unsigned ipaddr_bits(int family) {
        return family == AF_INET ? 32 : 128;
}

/* "1.2.3.4:7", "[::1]:7" or "*:7" (then *ret_wildcard is set and ret is 0.0.0.0:7).
 * Port 0 is allowed (ephemeral). Returns 0 or -EINVAL / -ERANGE. */
int ipaddr_parse_endpoint(const char *s, IpAddr *ret, bool *ret_wildcard);

/* "10.0.0.0/8", "2001:db8::/32" or a bare address (a host prefix). Host bits must be zero.
 * Returns 0, -EINVAL (syntax), -ERANGE (prefix too long) or -EDOM (host bits set; *ret then
 * holds the masked prefix, to suggest to the user). */
int ipaddr_parse_prefix(const char *s, IpAddr *ret);

/* From a kernel sockaddr; IPv4-mapped IPv6 becomes IPv4. Returns 0 or -EAFNOSUPPORT. */
int ipaddr_from_sockaddr(const struct sockaddr *sa, socklen_t len, IpAddr *ret);

/* To a kernel sockaddr; returns its length. */
socklen_t ipaddr_to_sockaddr(const IpAddr *a, SockAddr *ret);

/* Keep the first prefixlen bits (clamped to the family's width), zero the port. */
void ipaddr_mask(IpAddr *a, unsigned prefixlen);

/* Does prefix p contain address a (same family)? */
bool ipaddr_prefix_contains(const IpAddr *p, const IpAddr *a);

bool ipaddr_equal(const IpAddr *a, const IpAddr *b);

/* Formatting never fails; buf must hold IPADDR_STR_MAX bytes. Returns buf. */
const char *ipaddr_format_endpoint(const IpAddr *a, char *buf); /* 1.2.3.4:7, [::1]:7 */
const char *ipaddr_format_host(const IpAddr *a, char *buf);     /* 1.2.3.4, ::1 */
const char *ipaddr_format_prefix(const IpAddr *a, char *buf);   /* 10.0.0.0/8 */
