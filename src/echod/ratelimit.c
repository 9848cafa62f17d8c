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

bool token_bucket_take(TokenBucket *b, double rate, unsigned burst, uint64_t now) {
        double t;

        refill(b, rate, burst, now, &t);
        b->last_usec = now ? now : 1;
        if (t < 1.0) {
                b->tokens = t;
                return false;
        }
        b->tokens = t - 1.0;
        return true;
}

bool token_bucket_full(const TokenBucket *b, double rate, unsigned burst, uint64_t now) {
        double t;

        refill((TokenBucket *) b, rate, burst, now, &t);
        return t >= (double) burst;
}

struct RateTable {
        HashMap *index; /* source -> bucket index */
        TokenBucket *buckets;
        IpAddr *keys;
        int32_t *free_stack;
        unsigned n_free, next_fresh, max;
        uint64_t overflows;
};

int rate_table_new(unsigned max, RateTable **ret) {
        RateTable *t = calloc(1, sizeof(RateTable));

        if (!t)
                return -ENOMEM;
        t->max = max;
        t->index = hashmap_new(sizeof(IpAddr), (size_t) max * 2);
        t->buckets = calloc(max, sizeof(TokenBucket));
        t->keys = calloc(max, sizeof(IpAddr));
        t->free_stack = calloc(max, sizeof(int32_t));
        if (!t->index || !t->buckets || !t->keys || !t->free_stack) {
                rate_table_free(t);
                return -ENOMEM;
        }
        *ret = t;
        return 0;
}

RateTable *rate_table_free(RateTable *t) {
        if (t) {
                hashmap_free(t->index);
                free(t->buckets);
                free(t->keys);
                free(t->free_stack);
                free(t);
        }
        return NULL;
}

static int alloc_bucket(RateTable *t) {
        if (t->n_free > 0)
                return t->free_stack[--t->n_free];
        if (t->next_fresh < t->max)
                return (int) t->next_fresh++;
        return -ENOSPC;
}

unsigned rate_table_sweep(RateTable *t, double rate, unsigned burst, uint64_t now) {
        /* collect first: removing while iterating an open-addressing map would skip entries */
        for (unsigned i = 0; i < t->next_fresh; i++) {
                int32_t *v = hashmap_get(t->index, &t->keys[i]);
                if (!v || *v != (int32_t) i)
                        continue; /* a free slot */
                if (token_bucket_full(&t->buckets[i], rate, burst, now)) {
                        hashmap_remove(t->index, &t->keys[i]);
                        t->free_stack[t->n_free++] = (int32_t) i;
                }
        }
        return (unsigned) hashmap_size(t->index);
}

bool rate_table_take(RateTable *t, const IpAddr *source, double rate, unsigned burst, uint64_t now) {
        int32_t *v = hashmap_get(t->index, source);
        int i;

        if (v)
                return token_bucket_take(&t->buckets[*v], rate, burst, now);

        /* a new source starts with a full bucket, which must be remembered from now on */
        i = alloc_bucket(t);
        if (i < 0 && rate_table_sweep(t, rate, burst, now) < t->max)
                i = alloc_bucket(t);
        if (i < 0) {
                t->overflows++;
                return true;
        }
        t->keys[i] = *source;
        t->buckets[i] = (TokenBucket) { 0 };
        if (hashmap_put(t->index, source, i) < 0) {
                t->free_stack[t->n_free++] = i;
                t->overflows++;
                return true;
        }
        return token_bucket_take(&t->buckets[i], rate, burst, now);
}

unsigned rate_table_size(const RateTable *t) {
        return (unsigned) hashmap_size(t->index);
}

uint64_t rate_table_overflows(const RateTable *t) {
        return t->overflows;
}

void rate_table_clear(RateTable *t) {
        hashmap_clear(t->index);
        t->n_free = 0;
        t->next_fresh = 0;
}
