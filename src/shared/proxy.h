/* PROXY protocol headers (HAProxy proxy-protocol.txt, v1 text and v2 binary): the encoder.
 * Pure functions; echoc sends these, tests build fixtures with them. */
#pragma once

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
