/* Benchmark, not a test: the cost of one rate_table_take() on a per-source table of 65,536 sources
 * (accept.c's SOURCE_RATES_MAX), on the three paths an admission can take. Prints ns per take and
 * never fails on time. Uses only the public API, so it builds against older ratelimit.c too:
 *   meson test -C build --benchmark ratelimit --verbose
 *   gcc -O2 -I src -I build tests/unit/bench-ratelimit.c src/echod/ratelimit.c \
 *       src/shared/hashmap.c src/shared/mem.c -lbsd -o bench-ratelimit */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "echod/ratelimit.h"
#include "shared/timeutil.h"

#define MAX 65536u
#define T0 (1000 * USEC_PER_SEC)
#define MIN_NSEC (300 * 1000 * 1000ull) /* measure each path for at least 0.3 s */

/* An IPv6 /64, numbered: 2001:db8:NNNN:NNNN::/64, as accept.c keys sources by default. */
static IpAddr source(uint32_t i) {
        IpAddr a = { .family = AF_INET6, .prefixlen = 64, .bytes = { 0x20, 0x01, 0x0d, 0xb8 } };

        a.bytes[4] = (uint8_t) (i >> 24);
        a.bytes[5] = (uint8_t) (i >> 16);
        a.bytes[6] = (uint8_t) (i >> 8);
        a.bytes[7] = (uint8_t) i;
        return a;
}

typedef struct Path {
        const char *name;
        RateTable *t;
        double rate;
        unsigned burst;
        uint32_t next;  /* the next source number */
        uint64_t (*now)(const struct Path *p);
        uint32_t (*pick)(struct Path *p);
        uint64_t admitted;
} Path;

/* Eviction: a steady stream of new sources, one every DT, with the rate chosen so that a bucket
 * taken once is full again exactly MAX * DT later: at every new source the table is full and
 * exactly one bucket, the oldest, has refilled. (Dropping every full bucket at once cannot
 * amortise anything here: there is never more than one.) */
#define DT 16 /* µs; MAX * DT = 2^20 µs, and the rate 10^6 / 2^20 per second is exact in binary */
static uint64_t now_stream(const Path *p) {
        return T0 + (uint64_t) p->next * DT;
}

/* Overflow: every tracked source took one token of five at T0, and it stays T0. */
static uint64_t now_fixed(const Path *p) {
        return T0;
}

static uint32_t pick_new(Path *p) {
        return p->next++;
}

/* Known: the tracked sources in a scattered order (an odd stride is a permutation of 2^16). */
static uint32_t pick_known(Path *p) {
        return (p->next++ * 40503u) % MAX;
}

static uint64_t nsec(void) {
        return clock_usec(CLOCK_MONOTONIC) * NSEC_PER_USEC;
}

static double run(Path *p, uint64_t *ret_ops) {
        uint64_t ops = 0, elapsed = 0;

        for (uint64_t batch = 1; elapsed < MIN_NSEC; batch *= 2) {
                uint64_t start = nsec();
                for (uint64_t i = 0; i < batch; i++) {
                        uint64_t now = p->now(p);
                        IpAddr s = source(p->pick(p));
                        p->admitted += rate_table_take(p->t, &s, p->rate, p->burst, now);
                }
                elapsed += nsec() - start;
                ops += batch;
        }
        *ret_ops = ops;
        return (double) elapsed / (double) ops;
}

static int setup(Path *p, uint64_t (*fill_now)(const Path *p)) {
        int r = rate_table_new(MAX, &p->t);

        if (r < 0) {
                fprintf(stderr, "rate_table_new: %s\n", strerror(-r));
                return r;
        }
        for (p->next = 0; p->next < MAX; p->next++) {
                IpAddr s = source(p->next);
                (void) rate_table_take(p->t, &s, p->rate, p->burst, fill_now(p));
        }
        return 0;
}

int main(void) {
        Path paths[] = {
                { "new source, oldest bucket full (evict)", .rate = 1e6 / (double) (MAX * DT), .burst = 1,
                  .now = now_stream, .pick = pick_new },
                { "new source, all mid-burst (overflow)", .rate = 1, .burst = 5, .now = now_fixed, .pick = pick_new },
                { "known source", .rate = 1, .burst = 5, .now = now_fixed, .pick = pick_known },
        };

        printf("rate_table_take on a full table of %u sources\n", MAX);
        printf("%-40s %10s %12s %10s %10s\n", "path", "takes", "ns/take", "overflows", "size");
        for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
                Path *p = &paths[i];
                uint64_t ops, overflows;
                double ns;

                if (setup(p, p->now) < 0)
                        return EXIT_FAILURE;
                if (p->pick == pick_known)
                        p->next = 0;
                overflows = rate_table_overflows(p->t);
                ns = run(p, &ops);
                printf("%-40s %10llu %12.1f %10llu %10u\n", p->name, (unsigned long long) ops, ns,
                       (unsigned long long) (rate_table_overflows(p->t) - overflows), rate_table_size(p->t));
                rate_table_free(p->t);
        }
        return EXIT_SUCCESS;
}
