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

/* Would the bucket be full at now (so it carries no state worth keeping)? */
bool token_bucket_full(const TokenBucket *b, double rate, unsigned burst, uint64_t now);

/* Per-source buckets, bounded: at most max sources tracked. A bucket that has refilled to full
 * is the same as no bucket, so full ones are dropped when room is needed; if every tracked
 * source is mid-burst (an address-rotation flood), new sources are let through unlimited
 * (the service-wide rate still applies) and counted in *overflows. */
typedef struct RateTable RateTable;

int rate_table_new(unsigned max, RateTable **ret);
RateTable *rate_table_free(RateTable *t);
bool rate_table_take(RateTable *t, const IpAddr *source, double rate, unsigned burst, uint64_t now);
/* Drop every bucket that is full again; returns how many remain. */
unsigned rate_table_sweep(RateTable *t, double rate, unsigned burst, uint64_t now);
unsigned rate_table_size(const RateTable *t);
uint64_t rate_table_overflows(const RateTable *t);
void rate_table_clear(RateTable *t);
