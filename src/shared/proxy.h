/* PROXY protocol headers (HAProxy proxy-protocol.txt, v1 text and v2 binary): the encoder and the
 * parser. Pure functions that never log; echoc sends headers, echod's master parses them, tests
 * build fixtures with the encoder. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "shared/ipaddr.h"

/* "PROXY TCP6 " + 2 x 39-char addresses + 2 x 5-digit ports + separators + CRLF = 104 <= 107. */
#define PROXY_V1_MAX 107
#define PROXY_V2_SIGNATURE_LEN 12
#define PROXY_V2_FIXED_LEN 16
#define PROXY_V2_MAX (PROXY_V2_FIXED_LEN + 36)
#define PROXY_HEADER_MAX PROXY_V1_MAX

/* The parser's cap on the v2 length field (addresses + TLVs). Real senders use 12 or 36 bytes plus
 * a few TLVs; 216 for AF_UNIX (LOCAL only). Beyond this: -E2BIG. */
#define PROXY_V2_LEN_MAX 1024
/* A buffer of this many bytes always decides: proxy_header_parse() never returns 0 for it. */
#define PROXY_PARSE_MAX (PROXY_V2_FIXED_LEN + PROXY_V2_LEN_MAX)

extern const uint8_t proxy_v2_signature[PROXY_V2_SIGNATURE_LEN];

/* v1: "PROXY TCP4 src dst sport dport\r\n" (not NUL-terminated); with src and dst both NULL,
 * "PROXY UNKNOWN\r\n". Mixed families are sent as TCP6 with the IPv4 side v4-mapped.
 * Returns the length, -EINVAL (only one of src/dst), -EAFNOSUPPORT or -ENOBUFS. */
ssize_t proxy_encode_v1(const IpAddr *src, const IpAddr *dst, void *buf, size_t size);

/* v2: signature, version 2 command PROXY, TCP over IPv4 or IPv6, addresses and ports; with src
 * and dst both NULL, the LOCAL command with family UNSPEC. Same mapping and returns as v1. */
ssize_t proxy_encode_v2(const IpAddr *src, const IpAddr *dst, void *buf, size_t size);

/* Dispatch on version (1 or 2; else -EINVAL). */
ssize_t proxy_encode_header(int version, const IpAddr *src, const IpAddr *dst, void *buf, size_t size);

typedef enum ProxyCommand {
        PROXY_CMD_LOCAL, /* v2 LOCAL: health check from the proxy itself */
        PROXY_CMD_PROXY, /* v1 (always), v2 PROXY */
} ProxyCommand;

typedef struct ProxyHeader {
        int version;          /* 1 or 2 */
        ProxyCommand command;
        bool has_addresses;   /* false: v1 UNKNOWN, v2 LOCAL, v2 PROXY with UNSPEC family — the
                               * receiver uses the socket's own addresses */
        IpAddr src, dst;      /* when has_addresses; IPv4-mapped IPv6 becomes IPv4; prefixlen 32/128 */
        size_t length;        /* bytes of header to consume (== the return value) */
} ProxyHeader;

/* Parse a PROXY header at the start of buf (bytes peeked from a socket; payload may follow it).
 * Returns the header length (> 0, <= len) and fills *ret, which is untouched otherwise;
 * 0 if buf is a valid prefix of a header so far (read more — never for len >= PROXY_PARSE_MAX);
 * -EBADMSG malformed, decided as soon as the prefix cannot become valid (garbage is refused at its
 * first byte); -E2BIG v1 without CRLF within PROXY_V1_MAX bytes, or v2 length field beyond
 * PROXY_V2_LEN_MAX; -EPROTONOSUPPORT v2 version other than 2 or unknown command;
 * -EAFNOSUPPORT v2 PROXY over a family/transport we cannot use (AF_UNIX, UDP, half-UNSPEC).
 * v1: "PROXY TCP4|TCP6 src dst sport dport\r\n" strictly (single spaces, addresses valid for the
 * family, IPv4 without leading zeros, ports 0..65535 without leading zeros), or "PROXY UNKNOWN"
 * followed by CRLF or by a space and anything up to CRLF. v2: LOCAL ignores the address block;
 * PROXY needs the length to cover the address block, and TLVs after it must be well formed (they
 * are skipped). Unknown v2 family or transport values are -EBADMSG. */
ssize_t proxy_header_parse(const void *buf, size_t len, ProxyHeader *ret);

/* Reading a header off a connected socket without ever taking a payload byte: peek at what
 * arrived and parse it after what is held. A complete header is consumed exactly; a valid but
 * incomplete prefix is all header, so it is consumed into the reader (otherwise the socket would
 * stay readable and a level-triggered wait would spin on the same bytes). */
typedef struct ProxyReader {
        uint8_t *held; /* PROXY_PARSE_MAX bytes once something is held */
        size_t len;
} ProxyReader;

/* Returns the header's length with *ret filled (the socket now starts at the payload), 0 if more
 * must arrive, or
 * -errno: -ECONNRESET closed before the header ended, a proxy_header_parse() error, -EIO, -ENOMEM. */
int proxy_header_read(int fd, ProxyReader *r, ProxyHeader *ret);
void proxy_reader_done(ProxyReader *r);
