/* Latency statistics: Welford running moments and a log-linear histogram. */
#include "echoc/stats.h"

#include <math.h>
#include <string.h>

void rtt_add(RttStats *s, double ms) {
        if (s->n == 0 || ms < s->min)
                s->min = ms;
        if (s->n == 0 || ms > s->max)
                s->max = ms;
        s->n++;
        double d = ms - s->mean;
        s->mean += d / (double) s->n;
        s->m2 += d * (ms - s->mean);
}

double rtt_min(const RttStats *s) {
        return s->n > 0 ? s->min : NAN;
}

double rtt_avg(const RttStats *s) {
        return s->n > 0 ? s->mean : NAN;
}

double rtt_max(const RttStats *s) {
        return s->n > 0 ? s->max : NAN;
}

double rtt_mdev(const RttStats *s) {
        return s->n > 0 ? sqrt(s->m2 / (double) s->n) : NAN;
}

static unsigned hist_index(uint64_t v) {
        if (v < 2 * HIST_SUB)
                return (unsigned) v;
        unsigned msb = 63u - (unsigned) __builtin_clzll(v); /* >= 7 */
        unsigned shift = msb - 6;                           /* v >> shift is in [64, 128) */
        unsigned idx = 2 * HIST_SUB + (shift - 1) * HIST_SUB + (unsigned) ((v >> shift) - HIST_SUB);
        return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

/* The middle of a bucket's value range. */
static uint64_t hist_value(unsigned idx) {
        if (idx < 2 * HIST_SUB)
                return idx;
        unsigned shift = (idx - 2 * HIST_SUB) / HIST_SUB + 1;
        uint64_t low = ((uint64_t) ((idx - 2 * HIST_SUB) % HIST_SUB) + HIST_SUB) << shift;
        return low + ((UINT64_C(1) << shift) >> 1);
}

void hist_add(Histogram *h, uint64_t ns) {
        h->buckets[hist_index(ns)]++;
        if (h->count == 0 || ns < h->min)
                h->min = ns;
        if (ns > h->max)
                h->max = ns;
        h->count++;
        h->sum += (double) ns;
}

void hist_merge(Histogram *into, const Histogram *from) {
        if (from->count == 0)
                return;
        for (unsigned i = 0; i < HIST_BUCKETS; i++)
                into->buckets[i] += from->buckets[i];
        if (into->count == 0 || from->min < into->min)
                into->min = from->min;
        if (from->max > into->max)
                into->max = from->max;
        into->count += from->count;
        into->sum += from->sum;
}

uint64_t hist_percentile(const Histogram *h, double p) {
        if (h->count == 0)
                return 0;
        /* nearest rank: the smallest value with at least p% of samples at or below it */
        uint64_t rank = (uint64_t) ceil(p / 100.0 * (double) h->count);
        if (rank < 1)
                rank = 1;
        uint64_t seen = 0;
        for (unsigned i = 0; i < HIST_BUCKETS; i++) {
                seen += h->buckets[i];
                if (seen >= rank) {
                        uint64_t v = hist_value(i);
                        return v > h->max ? h->max : v < h->min ? h->min : v;
                }
        }
        return h->max;
}
