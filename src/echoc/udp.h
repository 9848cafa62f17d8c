/* UDP echo (RFC 862 over UDP), the part ping and load share: the probe payload (layout, filler,
 * verification), and the ledger that classifies every reply (intact,
 * duplicate, reordered, corrupted, stray) and keeps the counts and round-trip times.
 *
 * Payload, all integers big-endian:
 *   bytes  0..7   session: random per run, so replies to another run (or anyone else's
 *                 datagrams) are told apart
 *   bytes  8..15  sequence number, from 0
 *   bytes 16..23  send time, CLOCK_MONOTONIC nanoseconds
 *   bytes 24..    filler: splitmix64 seeded with session ^ (seq * 0x9e3779b97f4a7c15), each 64-bit
 *                 output little-endian, the last one cut short
 * so every byte of a reply can be checked. The ledger owns no socket and never prints. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "echoc/echoc.h"
#include "echoc/report.h"
#include "shared/ipaddr.h"

#define UDP_HEADER_SIZE 24u
#define UDP_PAYLOAD_MAX 65507u /* the largest UDP payload over IPv4 */

void udp_payload_fill(uint8_t *buf, size_t size, uint64_t session, uint64_t seq, uint64_t sent_ns);

/* The offset of the first byte of buf[0..len) that differs from the payload (session, seq,
 * sent_ns) of length size, or size when len == size and all match (min(len, size) when one is a
 * prefix of the other). */
size_t udp_payload_diff(const uint8_t *buf, size_t len, size_t size, uint64_t session, uint64_t seq, uint64_t sent_ns);

/* An error a connected UDP socket reports from an ICMP message about an earlier datagram. */
bool udp_icmp_error(int err);

/* The exit status of a UDP run from its counts and r (0 or the -errno that ended it); sets
 * s->error to what ended it, or to the ICMP port unreachable errors seen. */
int udp_verdict(Session *s, const UdpStats *st, int r);

typedef enum UdpReplyKind {
        UDP_REPLY_OK,        /* the first intact echo of a probe */
        UDP_REPLY_DUPLICATE, /* an intact echo of a probe already echoed */
        UDP_REPLY_CORRUPT,   /* this run's session, but some byte (or the length) differs */
        UDP_REPLY_STRAY,     /* not this run's: another session, or shorter than its header */
} UdpReplyKind;

typedef struct UdpReply {
        UdpReplyKind kind;
        size_t len;
        uint64_t seq;       /* valid unless kind is STRAY or !seq_sent */
        bool seq_sent;      /* the sequence number is one we sent (CORRUPT may carry another) */
        bool reordered;     /* OK: a later probe was echoed first */
        bool late;          /* OK/DUPLICATE: after the reply timeout */
        bool settled;       /* this reply settled its probe (its first reply, intact or not) */
        double rtt_ms;      /* OK/DUPLICATE (and CORRUPT with an intact send time); else NAN */
        size_t mismatch_at; /* CORRUPT: offset of the first differing byte */
} UdpReply;

/* Probes sent but not yet settled (replied to, refused or expired) are "outstanding"; the window
 * of load mode counts them. */
typedef struct UdpLedger {
        uint64_t session;
        size_t size;
        uint64_t timeout_ns;
        uint64_t start_ns;
        uint64_t *ring; /* send time of seq [floor, next) at ring[seq & mask]; SETTLED bit */
        size_t mask;
        uint64_t floor, next, outstanding;
        uint64_t *ok_bits, *bad_bits; /* every seq sent: echoed intact; echoed corrupted */
        size_t n_words;
        bool any_ok;
        uint64_t highest_ok;
        UdpStats st;
} UdpLedger;

/* size: payload bytes (UDP_HEADER_SIZE .. UDP_PAYLOAD_MAX). Returns 0 or -ENOMEM. */
int udp_ledger_init(UdpLedger *l, size_t size, uint64_t timeout_usec, uint64_t start_ns);
void udp_ledger_done(UdpLedger *l);

/* Write the payload of the next count probes (seq l->next ...) into bufs[i], stamped sent_ns. */
void udp_ledger_build(const UdpLedger *l, uint8_t *const *bufs, unsigned count, uint64_t sent_ns);
/* The next count probes were sent at sent_ns (as built). Returns 0 or -ENOMEM. */
int udp_ledger_sent(UdpLedger *l, unsigned count, uint64_t sent_ns);

/* Classify a received datagram and count it. */
/* Classify a received datagram of len bytes (buf holds at least min(len, size) of them) and count
 * it. */
void udp_ledger_reply(UdpLedger *l, const uint8_t *buf, size_t len, uint64_t now_ns, UdpReply *ret);

/* Settle seq without a reply (an ICMP error was attributed to it). Returns false if it was not
 * outstanding. */
bool udp_ledger_settle(UdpLedger *l, uint64_t seq);
/* The newest outstanding probe, if any: where an ICMP error belongs. */
bool udp_ledger_newest_outstanding(const UdpLedger *l, uint64_t *ret_seq);

/* Settle the next probe whose timeout has passed by now_ns; returns true with its seq, false when
 * none is due. */
bool udp_ledger_expire(UdpLedger *l, uint64_t now_ns, uint64_t *ret_seq);
/* When the oldest outstanding probe times out (ns), or 0 when none is outstanding. */
uint64_t udp_ledger_next_expiry(const UdpLedger *l);

/* Whether seq was echoed intact / only corrupted (seq < l->next). */
bool udp_ledger_echoed(const UdpLedger *l, uint64_t seq);
bool udp_ledger_corrupted(const UdpLedger *l, uint64_t seq);

/* Count what was never answered (st.lost) once everything is over. */
void udp_ledger_finish(UdpLedger *l);

uint64_t udp_now_ns(void);
