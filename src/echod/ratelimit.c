/* New-connection rate limits: token buckets, service-wide and per source group.
 * Pure logic on a caller-supplied clock (microseconds), so tests run on a fake one.
 * Rates never switch a listener off (inetd's "looping", systemd's trigger limit): over the rate,
 * that one connection is refused, and recovery is immediate when the rate falls. */
#include "echod/ratelimit.h"

#include <errno.h>
#include <stdlib.h>

#include "shared/hashmap.h"
#include "shared/timeutil.h"

static void refill(TokenBucket *b, double rate, unsigned burst, uint64_t now, double *ret) {
        double t;

        if (b->last_usec == 0)
                t = burst;
        else {
                uint64_t dt = now > b->last_usec ? now - b->last_usec : 0;
                t = b->tokens + (double) dt * rate / (double) USEC_PER_SEC;
                if (t > burst)
                        t = burst;
        }
        *ret = t;
}

bool token_bucket_take_n(TokenBucket *b, double rate, unsigned burst, double n, uint64_t now) {
        double t;

        refill(b, rate, burst, now, &t);
        b->last_usec = now ? now : 1;
        if (t < n) {
                b->tokens = t;
                return false;
        }
        b->tokens = t - n;
        return true;
}

bool token_bucket_take(TokenBucket *b, double rate, unsigned burst, uint64_t now) {
        return token_bucket_take_n(b, rate, burst, 1.0, now);
}

bool token_bucket_full(const TokenBucket *b, double rate, unsigned burst, uint64_t now) {
        double t;

        refill((TokenBucket *) b, rate, burst, now, &t);
        return t >= (double) burst;
}

/* A bucket and its list links share a cache line or two: a take reads the one and moves the
 * other to the front. */
typedef struct Slot {
        TokenBucket bucket;
        int32_t prev, next;
} Slot;

struct RateTable {
        HashMap *index; /* source -> slot */
        /* Slots in use form a doubly-linked list, most recently taken first (head) to least
         * recently taken (tail); free slots are chained through next. -1 ends a chain. */
        Slot *slots;
        IpAddr *keys; /* apart: only a new or dropped source needs its key */
        int32_t head, tail, free_head;
        unsigned next_fresh, max;
        uint64_t overflows, evictions;
};

/* Full buckets dropped from the tail per new source: one makes room for the newcomer, the other
 * shrinks the table back towards the sources that still carry state, so that a table filled once
 * by a burst of sources does not stay full. A constant, so a new source stays O(1). */
#define RECLAIM_PER_NEW_SOURCE 2

int rate_table_new(unsigned max, RateTable **ret) {
        RateTable *t;

        if (max > INT32_MAX)
                return -EINVAL;
        t = calloc(1, sizeof(RateTable));
        if (!t)
                return -ENOMEM;
        t->max = max;
        t->head = t->tail = t->free_head = -1;
        t->index = hashmap_new(sizeof(IpAddr), (size_t) max * 2);
        t->slots = calloc(max, sizeof(Slot));
        t->keys = calloc(max, sizeof(IpAddr));
        if (!t->index || !t->slots || !t->keys) {
                rate_table_free(t);
                return -ENOMEM;
        }
        *ret = t;
        return 0;
}

RateTable *rate_table_free(RateTable *t) {
        if (t) {
                hashmap_free(t->index);
                free(t->slots);
                free(t->keys);
                free(t);
        }
        return NULL;
}

static void lru_unlink(RateTable *t, int32_t i) {
        Slot *s = &t->slots[i];

        if (s->prev >= 0)
                t->slots[s->prev].next = s->next;
        else
                t->head = s->next;
        if (s->next >= 0)
                t->slots[s->next].prev = s->prev;
        else
                t->tail = s->prev;
}

static void lru_push_front(RateTable *t, int32_t i) {
        Slot *s = &t->slots[i];

        s->prev = -1;
        s->next = t->head;
        if (t->head >= 0)
                t->slots[t->head].prev = i;
        else
                t->tail = i;
        t->head = i;
}

static int32_t alloc_slot(RateTable *t) {
        int32_t i = t->free_head;

        if (i >= 0) {
                t->free_head = t->slots[i].next;
                return i;
        }
        if (t->next_fresh < t->max)
                return (int32_t) t->next_fresh++;
        return -ENOSPC;
}

static void release_slot(RateTable *t, int32_t i) {
        t->evictions++;
        hashmap_remove(t->index, &t->keys[i]);
        lru_unlink(t, i);
        t->slots[i].next = t->free_head;
        t->free_head = i;
}

/* Which bucket to drop: the least recently taken, the tail. Every bucket in the table shares one
 * rate and burst (accept.c starts the table afresh when either changes), and a take leaves fewer
 * than burst tokens, so a bucket last taken at L is full again by L + burst / rate at the latest:
 * the tail is the first bucket guaranteed to be full. It is not always the first to be full (a
 * source taken later but left with burst - 1 tokens refills sooner than an older one left empty),
 * but it can lag that one only while the tail itself was taken less than burst / rate ago. The
 * table overflows only when it is full and its tail is not, that is when all max sources in it
 * were taken within the last burst / rate seconds (about one at the default burst for rates of
 * 1/s and up): max * rate / burst new sources a second, the address-rotation flood for which
 * letting new sources through unlimited is the documented answer anyway. An exact order, by the
 * time each bucket is full again, would need a heap (O(log n)) and would differ only inside that
 * flood. The check itself is exact: only a full bucket, which is the same as no bucket, is ever
 * dropped, so no source loses state. (A clock stepping back only makes the tail a worse guess,
 * never a wrong drop.) */
static void reclaim(RateTable *t, double rate, unsigned burst, uint64_t now, unsigned n) {
        while (n-- > 0 && t->tail >= 0 && token_bucket_full(&t->slots[t->tail].bucket, rate, burst, now))
                release_slot(t, t->tail);
}

unsigned rate_table_sweep(RateTable *t, double rate, unsigned burst, uint64_t now) {
        for (int32_t i = t->tail, p; i >= 0; i = p) {
                p = t->slots[i].prev;
                if (token_bucket_full(&t->slots[i].bucket, rate, burst, now))
                        release_slot(t, i);
        }
        return (unsigned) hashmap_size(t->index);
}

RateTake rate_table_take_n(RateTable *t, const IpAddr *source, double rate, unsigned burst, double n,
                           uint64_t now) {
        int32_t *v = hashmap_get(t->index, source);
        int32_t i;

        if (v) {
                i = *v;
                if (t->head != i) {
                        lru_unlink(t, i);
                        lru_push_front(t, i);
                }
        } else {
                /* a new source starts with a full bucket, which must be remembered from now on */
                reclaim(t, rate, burst, now, RECLAIM_PER_NEW_SOURCE);
                i = alloc_slot(t);
                if (i < 0) {
                        t->overflows++;
                        return RATE_UNTRACKED;
                }
                t->keys[i] = *source;
                t->slots[i].bucket = (TokenBucket) { 0 };
                if (hashmap_put(t->index, source, i) < 0) {
                        t->slots[i].next = t->free_head;
                        t->free_head = i;
                        t->overflows++;
                        return RATE_UNTRACKED;
                }
                lru_push_front(t, i);
        }
        return token_bucket_take_n(&t->slots[i].bucket, rate, burst, n, now) ? RATE_TAKEN : RATE_OVER;
}

bool rate_table_take(RateTable *t, const IpAddr *source, double rate, unsigned burst, uint64_t now) {
        return rate_table_take_n(t, source, rate, burst, 1.0, now) != RATE_OVER;
}

unsigned rate_table_size(const RateTable *t) {
        return (unsigned) hashmap_size(t->index);
}

unsigned rate_table_capacity(const RateTable *t) {
        return t->max;
}

uint64_t rate_table_overflows(const RateTable *t) {
        return t->overflows;
}

uint64_t rate_table_evictions(const RateTable *t) {
        return t->evictions;
}

void rate_table_clear(RateTable *t) {
        hashmap_clear(t->index);
        t->head = t->tail = t->free_head = -1;
        t->next_fresh = 0;
}
