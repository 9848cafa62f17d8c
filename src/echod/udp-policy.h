/* Whether a UDP datagram gets its echo: every check a reply must pass, in one pure module that
 * runs in the UDP worker (udp-worker.c) on a caller-supplied clock, so tests run on a fake one.
 *
 * A reply goes back to the datagram's source, which the network does not authenticate: anyone
 * can send a datagram "from" a victim. So nothing is answered that could hit a broadcast or
 * multicast group or a service that answers anything (two such services echo each other forever,
 * CERT CA-1996-01), and what any source group, and the whole service, gets back is bounded by
 * token buckets: the most a spoofed flood can aim at a victim is its source group's rate, and at
 * everyone together the service's budget. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "echod/config.h"
#include "echod/udp-proto.h"
#include "shared/ipaddr.h"

typedef struct UdpPolicy UdpPolicy;

/* broadcast: the local interfaces' broadcast addresses. Returns 0 or -ENOMEM. */
int udp_policy_new(const UdpLimits *limits, const CidrList *allow, const CidrList *deny, const CidrList *broadcast,
                   UdpPolicy **ret);
UdpPolicy *udp_policy_free(UdpPolicy *p);

/* One datagram of len bytes from src, sent to dst (from IP_PKTINFO / IPV6_PKTINFO;
 * dst_not_local: the kernel says it was not sent to one of our unicast addresses). Returns -1 to
 * answer it (its tokens are taken), else the UdpDrop that stops it. */
int udp_policy_judge(UdpPolicy *p, const IpAddr *src, const IpAddr *dst, bool dst_not_local, size_t len,
                     uint64_t now);

/* Source groups holding state now, and those turned away for want of room since the start. */
unsigned udp_policy_sources(const UdpPolicy *p);

/* Fill a UdpLimits' deny_ports bitmap from a list. */
void udp_limits_deny_ports(UdpLimits *l, const uint16_t *ports, unsigned n);
