/* New-connection rate limits: token buckets, service-wide and per source group.
 * Pure logic on a caller-supplied clock (microseconds), so tests run on a fake one. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "shared/ipaddr.h"

typedef struct TokenBucket {
        double tokens;
        uint64_t last_usec; /* 0 = never used: starts full */
} TokenBucket;

/* Refill at rate per second up to burst, then take one token if there is one. */
bool token_bucket_take(TokenBucket *b, double rate, unsigned burst, uint64_t now);
/* The same for n tokens (a datagram's bytes): all of them or none. */
bool token_bucket_take_n(TokenBucket *b, double rate, unsigned burst, double n, uint64_t now);

/* Would the bucket be full at now (so it carries no state worth keeping)? */
bool token_bucket_full(const TokenBucket *b, double rate, unsigned burst, uint64_t now);

/* Per-source buckets, bounded: at most max sources tracked, in memory proportional to max (a
 * bucket, a key, two int32 list links and two hash slots each, allocated once). Every take is
 * O(1), whether or not the table is full: the buckets are kept in least-recently-taken order, and
 * a bucket that has refilled to full is the same as no bucket, so a new source looks at (at most
 * two of) the least recently taken ones and drops those that are full, reusing a slot. If the
 * least recently taken one is still mid-burst while the table is full (all max sources were taken
 * within the last burst / rate seconds: an address-rotation flood), the new source is let through
 * unlimited (the service-wide rate still applies) and counted in *overflows. */
typedef struct RateTable RateTable;

int rate_table_new(unsigned max, RateTable **ret);
RateTable *rate_table_free(RateTable *t);
bool rate_table_take(RateTable *t, const IpAddr *source, double rate, unsigned burst, uint64_t now);
/* The same for n tokens, telling an overflow (RATE_UNTRACKED: the source could not be given a
 * bucket; rate_table_take() lets it through, UDP does not) from a bucket that is short. */
typedef enum RateTake { RATE_TAKEN, RATE_OVER, RATE_UNTRACKED } RateTake;
RateTake rate_table_take_n(RateTable *t, const IpAddr *source, double rate, unsigned burst, double n,
                           uint64_t now);
/* Drop every bucket that is full again; returns how many remain. O(size): takes never need it. */
unsigned rate_table_sweep(RateTable *t, double rate, unsigned burst, uint64_t now);
unsigned rate_table_size(const RateTable *t);
unsigned rate_table_capacity(const RateTable *t); /* max */
uint64_t rate_table_overflows(const RateTable *t);
/* Full buckets dropped, by a new source or a sweep, to free their slot (no state is lost). */
uint64_t rate_table_evictions(const RateTable *t);
void rate_table_clear(RateTable *t);
