/* UDP echo, shared by ping and load: payload codec, reply ledger. */
#include "echoc/udp.h"

#include <endian.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shared/macro.h"

#define SETTLED (UINT64_C(1) << 63) /* in a ring entry: replied to, refused or expired */
#define RING_MIN 1024u

uint64_t udp_now_ns(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* ---- payload ---- */

static uint64_t splitmix64(uint64_t *x) {
        uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
        z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
        return z ^ (z >> 31);
}

static void put_be64(uint8_t *p, uint64_t v) {
        v = htobe64(v);
        memcpy(p, &v, sizeof(v));
}

static uint64_t get_be64(const uint8_t *p) {
        uint64_t v;
        memcpy(&v, p, sizeof(v));
        return be64toh(v);
}

void udp_payload_fill(uint8_t *buf, size_t size, uint64_t session, uint64_t seq, uint64_t sent_ns) {
        uint64_t x = session ^ (seq * UINT64_C(0x9e3779b97f4a7c15));

        put_be64(buf, session);
        put_be64(buf + 8, seq);
        put_be64(buf + 16, sent_ns);
        for (size_t off = UDP_HEADER_SIZE; off < size; off += 8) {
                uint64_t w = htole64(splitmix64(&x));
                memcpy(buf + off, &w, MIN((size_t) 8, size - off));
        }
}

size_t udp_payload_diff(const uint8_t *buf, size_t len, size_t size, uint64_t session, uint64_t seq, uint64_t sent_ns) {
        uint8_t head[UDP_HEADER_SIZE];
        uint64_t x = session ^ (seq * UINT64_C(0x9e3779b97f4a7c15));
        size_t n = MIN(len, size);

        put_be64(head, session);
        put_be64(head + 8, seq);
        put_be64(head + 16, sent_ns);
        for (size_t i = 0; i < MIN(n, (size_t) UDP_HEADER_SIZE); i++)
                if (buf[i] != head[i])
                        return i;
        for (size_t off = UDP_HEADER_SIZE; off < n; off += 8) {
                uint64_t w = htole64(splitmix64(&x));
                size_t k = MIN((size_t) 8, n - off);
                if (memcmp(buf + off, &w, k) != 0)
                        for (size_t i = 0; i < k; i++)
                                if (buf[off + i] != ((const uint8_t *) &w)[i])
                                        return off + i;
        }
        return n;
}

bool udp_icmp_error(int err) {
        return err == -ECONNREFUSED || err == -EHOSTUNREACH || err == -ENETUNREACH;
}

int udp_verdict(Session *s, const UdpStats *st, int r) {
        char buf[IPADDR_STR_MAX];

        ipaddr_format_endpoint(&s->remote, buf);
        if (r < 0) {
                snprintf(s->error, sizeof(s->error), "%s %s: %s", r == -ENOMEM ? "memory for" : "datagrams to", buf,
                         strerror(-r));
                return EXIT_ERROR;
        }
        if (st->refused > 0)
                snprintf(s->error, sizeof(s->error), "%s: %s (ICMP port unreachable), %llu times for %llu datagrams",
                         buf, strerror(ECONNREFUSED), (unsigned long long) st->refused, (unsigned long long) st->sent);
        /* duplicates, reordering, late and stray replies are reported, not failures */
        return st->sent > 0 && st->received == st->sent && st->corrupted == 0 ? EXIT_INTACT : EXIT_MISMATCH;
}

/* ---- ledger ---- */

int udp_ledger_init(UdpLedger *l, size_t size, uint64_t timeout_usec, uint64_t start_ns) {
        *l = (UdpLedger) {
                .size = size,
                .timeout_ns = timeout_usec * 1000u,
                .start_ns = start_ns,
                .mask = RING_MIN - 1,
                .n_words = RING_MIN / 64,
        };
        arc4random_buf(&l->session, sizeof(l->session));
        l->ring = calloc(RING_MIN, sizeof(uint64_t));
        l->ok_bits = calloc(l->n_words, sizeof(uint64_t));
        l->bad_bits = calloc(l->n_words, sizeof(uint64_t));
        if (!l->ring || !l->ok_bits || !l->bad_bits) {
                udp_ledger_done(l);
                return -ENOMEM;
        }
        return 0;
}

void udp_ledger_done(UdpLedger *l) {
        l->ring = mfree(l->ring);
        l->ok_bits = mfree(l->ok_bits);
        l->bad_bits = mfree(l->bad_bits);
}

static bool bit_get(const uint64_t *bits, uint64_t i) {
        return (bits[i / 64] >> (i % 64)) & 1;
}

static void bit_set(uint64_t *bits, uint64_t i) {
        bits[i / 64] |= UINT64_C(1) << (i % 64);
}

static int grow_bits(uint64_t **bits, size_t old, size_t n) {
        uint64_t *b = reallocarray(*bits, n, sizeof(uint64_t));
        if (!b)
                return -ENOMEM;
        memset(b + old, 0, (n - old) * sizeof(uint64_t));
        *bits = b;
        return 0;
}

/* Room for seqs up to next + count: the bitmaps and the ring of unsettled send times. */
static int ledger_reserve(UdpLedger *l, unsigned count) {
        uint64_t end = l->next + count;

        if (end > (uint64_t) l->n_words * 64) {
                size_t n = l->n_words;
                while ((uint64_t) n * 64 < end)
                        n *= 2;
                if (grow_bits(&l->ok_bits, l->n_words, n) < 0 || grow_bits(&l->bad_bits, l->n_words, n) < 0)
                        return -ENOMEM;
                l->n_words = n;
        }
        if (end - l->floor > l->mask + 1) {
                size_t cap = l->mask + 1;
                while (cap < end - l->floor)
                        cap *= 2;
                uint64_t *ring = calloc(cap, sizeof(uint64_t));
                if (!ring)
                        return -ENOMEM;
                for (uint64_t s = l->floor; s < l->next; s++)
                        ring[s & (cap - 1)] = l->ring[s & l->mask];
                free(l->ring);
                l->ring = ring;
                l->mask = cap - 1;
        }
        return 0;
}

void udp_ledger_build(const UdpLedger *l, uint8_t *const *bufs, unsigned count, uint64_t sent_ns) {
        for (unsigned i = 0; i < count; i++)
                udp_payload_fill(bufs[i], l->size, l->session, l->next + i, sent_ns);
}

int udp_ledger_sent(UdpLedger *l, unsigned count, uint64_t sent_ns) {
        int r = ledger_reserve(l, count);
        if (r < 0)
                return r;
        for (unsigned i = 0; i < count; i++)
                l->ring[(l->next + i) & l->mask] = sent_ns;
        l->next += count;
        l->outstanding += count;
        l->st.sent += count;
        return 0;
}

static bool in_ring(const UdpLedger *l, uint64_t seq) {
        return seq >= l->floor && seq < l->next;
}

static void advance_floor(UdpLedger *l) {
        while (l->floor < l->next && (l->ring[l->floor & l->mask] & SETTLED))
                l->floor++;
}

/* Returns whether seq was outstanding. */
static bool settle(UdpLedger *l, uint64_t seq) {
        uint64_t *e;

        if (!in_ring(l, seq))
                return false;
        e = &l->ring[seq & l->mask];
        if (*e & SETTLED)
                return false;
        *e |= SETTLED;
        l->outstanding--;
        advance_floor(l);
        return true;
}

bool udp_ledger_settle(UdpLedger *l, uint64_t seq) {
        return settle(l, seq);
}

bool udp_ledger_newest_outstanding(const UdpLedger *l, uint64_t *ret_seq) {
        for (uint64_t s = l->next; s > l->floor; s--)
                if (!(l->ring[(s - 1) & l->mask] & SETTLED)) {
                        *ret_seq = s - 1;
                        return true;
                }
        return false;
}

bool udp_ledger_expire(UdpLedger *l, uint64_t now_ns, uint64_t *ret_seq) {
        advance_floor(l);
        if (l->floor == l->next || l->ring[l->floor & l->mask] + l->timeout_ns > now_ns)
                return false;
        *ret_seq = l->floor;
        (void) settle(l, l->floor);
        return true;
}

uint64_t udp_ledger_next_expiry(const UdpLedger *l) {
        /* the floor is kept on an unsettled entry (or at next) */
        return l->floor < l->next ? l->ring[l->floor & l->mask] + l->timeout_ns : 0;
}

bool udp_ledger_echoed(const UdpLedger *l, uint64_t seq) {
        return bit_get(l->ok_bits, seq);
}

bool udp_ledger_corrupted(const UdpLedger *l, uint64_t seq) {
        return bit_get(l->bad_bits, seq);
}

void udp_ledger_reply(UdpLedger *l, const uint8_t *buf, size_t len, uint64_t now_ns, UdpReply *ret) {
        uint64_t seq, sent_ns;
        size_t diff;
        bool known;

        *ret = (UdpReply) { .kind = UDP_REPLY_STRAY, .len = len, .rtt_ms = NAN };
        if (len < UDP_HEADER_SIZE || get_be64(buf) != l->session) {
                l->st.stray++;
                return;
        }
        seq = get_be64(buf + 8);
        ret->seq = seq;
        ret->seq_sent = seq < l->next;
        if (!ret->seq_sent) {
                /* ours, but a sequence number we never sent: a corrupted header */
                ret->kind = UDP_REPLY_CORRUPT;
                ret->mismatch_at = 8;
                l->st.corrupted++;
                return;
        }

        /* the send time is known exactly while seq is in the ring; older ones must at least be
         * a time during this run */
        diff = SIZE_MAX;
        known = in_ring(l, seq);
        if (known)
                sent_ns = l->ring[seq & l->mask] & ~SETTLED;
        else {
                sent_ns = get_be64(buf + 16);
                if (sent_ns < l->start_ns || sent_ns > now_ns)
                        diff = 16;
        }
        if (diff == SIZE_MAX)
                diff = udp_payload_diff(buf, len, l->size, l->session, seq, sent_ns);
        if (known || diff >= UDP_HEADER_SIZE)
                ret->rtt_ms = (double) (now_ns - sent_ns) / 1e6;

        if (diff < l->size || len != l->size) {
                ret->kind = UDP_REPLY_CORRUPT;
                ret->mismatch_at = MIN(diff, l->size);
                l->st.corrupted++;
                bit_set(l->bad_bits, seq);
                ret->settled = settle(l, seq);
                return;
        }

        ret->late = now_ns - sent_ns > l->timeout_ns;
        if (bit_get(l->ok_bits, seq)) {
                ret->kind = UDP_REPLY_DUPLICATE;
                l->st.duplicates++;
                return;
        }
        ret->kind = UDP_REPLY_OK;
        bit_set(l->ok_bits, seq);
        ret->settled = settle(l, seq);
        l->st.received++;
        if (ret->late)
                l->st.late++;
        if (l->any_ok && seq < l->highest_ok) {
                ret->reordered = true;
                l->st.reordered++;
        }
        if (!l->any_ok || seq > l->highest_ok)
                l->highest_ok = seq;
        l->any_ok = true;
        rtt_add(&l->st.rtt, ret->rtt_ms);
        hist_add(&l->st.latency, now_ns - sent_ns);
}

void udp_ledger_finish(UdpLedger *l) {
        uint64_t answered = 0;

        for (uint64_t w = 0; w * 64 < l->next; w++) {
                uint64_t bits = l->ok_bits[w] | l->bad_bits[w];
                if (l->next - w * 64 < 64)
                        bits &= (UINT64_C(1) << (l->next - w * 64)) - 1;
                answered += (uint64_t) __builtin_popcountll(bits);
        }
        l->st.lost = l->next - answered;
}
