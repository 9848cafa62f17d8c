/* Latency statistics: running min/avg/max/mdev (ping) and a fixed log-linear histogram for
 * percentiles (load) — neither allocates per sample. */
#pragma once

#include <stdint.h>

typedef struct RttStats {
        uint64_t n;
        double min, max, mean, m2; /* milliseconds; m2 is Welford's sum of squared deviations */
} RttStats;

void rtt_add(RttStats *s, double ms);
/* Undefined statistics (n == 0) are NAN; the reporters print them as null / "U". */
double rtt_min(const RttStats *s);
double rtt_avg(const RttStats *s);
double rtt_max(const RttStats *s);
double rtt_mdev(const RttStats *s); /* population standard deviation, as ping(8) */

/* Values in nanoseconds, exact below 128 ns, then 64 sub-buckets per power of two (< 1.6 %). */
#define HIST_SUB 64
#define HIST_BUCKETS (2 * HIST_SUB + 58 * HIST_SUB)

typedef struct Histogram {
        uint64_t count;
        uint64_t max;
        uint64_t min;
        double sum;
        uint64_t buckets[HIST_BUCKETS];
} Histogram;

void hist_add(Histogram *h, uint64_t ns);
void hist_merge(Histogram *into, const Histogram *from);
/* The value at percentile p (0..100), in ns; 0 when empty. */
uint64_t hist_percentile(const Histogram *h, double p);
