/* Admission decisions made before fork (global and per-source limits), and refusal summaries.
 * Pure logic: no I/O, no clock of its own (callers pass the time), so it is unit-testable. */
#include "echod/admit.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "echod/spawn-proto.h"
#include "shared/hashmap.h"
#include "shared/macro.h"

struct SourceTable {
        HashMap *map; /* masked IpAddr -> live connections; entries exist only while > 0 */
        uint64_t overflows;
};

static const char *const refusal_names[_REFUSE_MAX] = {
        [ADMIT_OK] = "admitted",
        [REFUSE_CAPACITY] = "capacity",
        [REFUSE_PER_SOURCE] = "per-source",
        [REFUSE_RATE] = "rate",
        [REFUSE_PER_SOURCE_RATE] = "per-source-rate",
        [REFUSE_ACL] = "acl",
        [REFUSE_PROXY] = "proxy",
        [REFUSE_FORK] = "fork-failed",
        [REFUSE_SPAWNER] = "spawner-failed",
};

const char *refusal_name(Refusal r) {
        return r >= 0 && r < _REFUSE_MAX ? refusal_names[r] : "unknown";
}

int source_table_new(SourceTable **ret) {
        SourceTable *t = calloc(1, sizeof(SourceTable));

        if (!t)
                return -ENOMEM;
        /* at most one entry per live child */
        t->map = hashmap_new(sizeof(IpAddr), SLOTS_MAX * 2);
        if (!t->map) {
                free(t);
                return -ENOMEM;
        }
        *ret = t;
        return 0;
}

SourceTable *source_table_free(SourceTable *t) {
        if (t) {
                hashmap_free(t->map);
                free(t);
        }
        return NULL;
}

unsigned source_table_count(SourceTable *t, const IpAddr *key) {
        int32_t *v = hashmap_get(t->map, key);
        return v ? (unsigned) *v : 0;
}

int source_table_add(SourceTable *t, const IpAddr *key) {
        int32_t *v = hashmap_get(t->map, key);

        if (v) {
                (*v)++;
                return 0;
        }
        int r = hashmap_put(t->map, key, 1);
        if (r < 0)
                t->overflows++;
        return r;
}

void source_table_remove(SourceTable *t, const IpAddr *key) {
        int32_t *v = hashmap_get(t->map, key);

        if (!v)
                return;
        if (--(*v) <= 0)
                hashmap_remove(t->map, key);
}

void source_table_clear(SourceTable *t) {
        hashmap_clear(t->map);
}

unsigned source_table_size(const SourceTable *t) {
        return (unsigned) hashmap_size(t->map);
}

void source_table_stats(const SourceTable *t, SourceTableStats *ret) {
        *ret = (SourceTableStats) {
                .entries = source_table_size(t),
                .capacity = SLOTS_MAX,
                .overflows = t->overflows,
        };
}

bool source_table_next(const SourceTable *t, size_t *pos, const void **ret_key, int32_t *ret_count) {
        return hashmap_next(t->map, pos, ret_key, ret_count);
}

static int by_address(const void *a, const void *b) {
        return memcmp(a, b, sizeof(IpAddr));
}

bool source_table_matches(const SourceTable *t, IpAddr *keys, unsigned n) {
        unsigned distinct = 0;

        qsort(keys, n, sizeof(IpAddr), by_address);
        for (unsigned i = 0; i < n;) {
                unsigned j = i;
                while (j < n && memcmp(&keys[j], &keys[i], sizeof(IpAddr)) == 0)
                        j++;
                if (source_table_count((SourceTable *) t, &keys[i]) != j - i)
                        return false;
                distinct++;
                i = j;
        }
        return source_table_size(t) == distinct;
}

void admit_source_key(const IpAddr *peer, const AdmitLimits *l, IpAddr *ret) {
        *ret = *peer;
        ipaddr_mask(ret, peer->family == AF_INET ? l->prefix_v4 : l->prefix_v6);
}

Refusal admit_counts(const AdmitLimits *l, unsigned active, unsigned from_source) {
        /* a per-source limit of max_connections or more never binds first: that is capacity */
        if (l->max_per_source > 0 && l->max_per_source < l->max_connections && from_source >= l->max_per_source)
                return REFUSE_PER_SOURCE;
        if (active >= l->max_connections)
                return REFUSE_CAPACITY;
        return ADMIT_OK;
}

Refusal admit_connection(SourceTable *t, const AdmitLimits *l, unsigned active, const IpAddr *key) {
        return admit_counts(l, active, l->max_per_source > 0 ? source_table_count(t, key) : 0);
}

void refusal_top_note(RefusalTop *t, const IpAddr *source) {
        unsigned min = 0;

        for (unsigned i = 0; i < t->n; i++) {
                if (ipaddr_equal(&t->items[i].source, source)) {
                        t->items[i].count++;
                        return;
                }
                if (t->items[i].count < t->items[min].count)
                        min = i;
        }
        if (t->n < REFUSAL_SOURCES_TOP) {
                t->items[t->n].source = *source;
                t->items[t->n++].count = 1;
                return;
        }
        t->items[min].source = *source;
        t->items[min].count++;
}

static int by_count_desc(const void *a, const void *b) {
        const RefusalTopItem *x = a, *y = b;
        return x->count < y->count ? 1 : x->count > y->count ? -1 : 0;
}

void refusal_top_sort(RefusalTop *t) {
        qsort(t->items, t->n, sizeof(t->items[0]), by_count_desc);
}

bool refusal_window_note(RefusalWindow *w, const IpAddr *source, uint64_t now) {
        unsigned min = 0;

        if (w->start_usec == 0) {
                *w = (RefusalWindow) { .start_usec = now ? now : 1 };
                return true;
        }
        w->count++;
        /* keep the heaviest sources (space-saving: replace the lightest when full) */
        for (unsigned i = 0; i < REFUSAL_TOP; i++) {
                if (w->top[i].count > 0 && ipaddr_equal(&w->top[i].source, source)) {
                        w->top[i].count++;
                        return false;
                }
                if (w->top[i].count < w->top[min].count)
                        min = i;
        }
        w->top[min].source = *source;
        w->top[min].count++;
        return false;
}

bool refusal_window_flush(RefusalWindow *w, Refusal reason, uint64_t now, uint64_t window_usec,
                          RefusalSummary *ret) {
        unsigned best = 0;

        if (w->start_usec == 0 || now - w->start_usec < window_usec)
                return false;
        if (w->count == 0) {
                /* a quiet window closes silently; the next refusal is reported at once */
                w->start_usec = 0;
                return false;
        }
        for (unsigned i = 1; i < REFUSAL_TOP; i++)
                if (w->top[i].count > w->top[best].count)
                        best = i;
        *ret = (RefusalSummary) {
                .reason = reason,
                .count = w->count,
                .window_usec = now - w->start_usec,
                .top_source = w->top[best].source,
                .top_count = w->top[best].count,
        };
        /* keep the window open (but empty): under a steady flood we summarise once per window */
        *w = (RefusalWindow) { .start_usec = now };
        return true;
}
