/* Admission decisions made before fork (global and per-source limits), and refusal summaries.
 * Pure logic: no I/O, no clock of its own (callers pass the time), so it is unit-testable. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "shared/ipaddr.h"

typedef enum Refusal {
        ADMIT_OK = 0,
        REFUSE_CAPACITY,        /* max_connections reached (or waited queue_timeout) */
        REFUSE_PER_SOURCE,      /* max_per_source reached for the peer's source prefix */
        REFUSE_RATE,            /* connection_rate exceeded */
        REFUSE_PER_SOURCE_RATE, /* per_source_rate exceeded for the peer's source prefix */
        REFUSE_ACL,             /* denied by allow/deny */
        REFUSE_PROXY,           /* PROXY header untrusted, malformed or missing */
        REFUSE_FORK,            /* fork() failed */
        REFUSE_SPAWNER,         /* the spawner that took it died, or was killed stuck, before forking */
        _REFUSE_MAX,
} Refusal;

const char *refusal_name(Refusal r); /* "capacity", "per-source", "rate", ... */

typedef struct AdmitLimits {
        unsigned max_connections;
        unsigned max_per_source; /* 0 = unlimited */
        unsigned prefix_v4, prefix_v6;
} AdmitLimits;

/* A per-source table's fill, for the status report: the connections' counts here (SourceTable), the
 * per-source rate buckets in ratelimit.h. Counters run from the start of the table. */
typedef struct SourceTableStats {
        unsigned entries, capacity;
        uint64_t overflows; /* a new source found no room (not tracked, let through) */
        uint64_t evictions; /* an entry dropped to make room for a new source */
} SourceTableStats;

typedef struct SourceTable SourceTable;

int source_table_new(SourceTable **ret);
SourceTable *source_table_free(SourceTable *t);
/* How many live connections a source key holds. */
unsigned source_table_count(SourceTable *t, const IpAddr *key);
int source_table_add(SourceTable *t, const IpAddr *key);
void source_table_remove(SourceTable *t, const IpAddr *key);
void source_table_clear(SourceTable *t);
unsigned source_table_size(const SourceTable *t);
/* Entries, capacity (SLOTS_MAX: a key per admitted connection at most) and the adds that found the
 * table full (none, with that capacity; evictions: never). */
void source_table_stats(const SourceTable *t, SourceTableStats *ret);
/* Iterate groups and their counts: start with *pos = 0. */
bool source_table_next(const SourceTable *t, size_t *pos, const void **ret_key, int32_t *ret_count);

/* Is t exactly the count of these keys (one per connection, in any order; sorted in place)? Every
 * key's count equals its number of occurrences and t holds no other key. O(n log n) in the keys,
 * never a walk of the table's capacity: for the invariant checks. */
bool source_table_matches(const SourceTable *t, IpAddr *keys, unsigned n);

/* The group a peer belongs to for per-source limits: its address masked to the prefix length. */
void admit_source_key(const IpAddr *peer, const AdmitLimits *l, IpAddr *ret);

/* Decide on concurrency given the current number of live (or queued) connections: the
 * per-source limit first (so a queue cannot be filled by one source), then the global one. */
Refusal admit_connection(SourceTable *t, const AdmitLimits *l, unsigned active, const IpAddr *key);
/* The same decision with the source's count given. */
Refusal admit_counts(const AdmitLimits *l, unsigned active, unsigned from_source);

/* Refusal logging without floods: the first refusal of a kind is reported at once, later ones
 * are counted and summarised once per window, with the sources that were refused most. */
#define REFUSAL_TOP 4
typedef struct RefusalWindow {
        uint64_t start_usec; /* 0 = no window open */
        uint64_t count;      /* refusals since the window opened (the first one excluded) */
        struct {
                IpAddr source;
                uint64_t count;
        } top[REFUSAL_TOP];
} RefusalWindow;

typedef struct RefusalSummary {
        Refusal reason;
        uint64_t count;
        uint64_t window_usec;
        IpAddr top_source;
        uint64_t top_count;
} RefusalSummary;

/* The sources refused most, for the status report: a fixed table with the space-saving
 * algorithm (a new source replaces the smallest count and inherits it), so memory and time per
 * refusal stay constant under an address-rotation flood. Exact while at most
 * REFUSAL_SOURCES_TOP sources were refused; beyond, the heavy hitters are still found. */
#define REFUSAL_SOURCES_TOP 64
typedef struct RefusalTopItem {
        IpAddr source;
        uint64_t count;
} RefusalTopItem;

typedef struct RefusalTop {
        RefusalTopItem items[REFUSAL_SOURCES_TOP];
        unsigned n;
} RefusalTop;

void refusal_top_note(RefusalTop *t, const IpAddr *source);
/* Sort by count, largest first. */
void refusal_top_sort(RefusalTop *t);

/* Note a refusal. Returns true if it opened a window (log it now, individually). */
bool refusal_window_note(RefusalWindow *w, const IpAddr *source, uint64_t now);
/* Close the window if it is at least window_usec old. Returns true and fills *ret if there was
 * something to summarise. */
bool refusal_window_flush(RefusalWindow *w, Refusal reason, uint64_t now, uint64_t window_usec,
                          RefusalSummary *ret);
