/* The status report: a snapshot of what echod is doing, for humans (aligned text), scripts (JSON)
 * and monitoring (the Prometheus text format, metrics.h).
 *
 * Built from const views of the modules that own the numbers (children, accept, spawner), taken
 * at once into a snapshot, then formatted: every form always comes from the same numbers. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "echod/accept.h"
#include "echod/children.h"
#include "echod/config.h"
#include "echod/spawner.h"
#include "echod/udp.h"

typedef enum StatusFormat {
        STATUS_TEXT,
        STATUS_JSON,
        STATUS_PROMETHEUS,
        _STATUS_FORMAT_MAX,
} StatusFormat;

/* "text", "json", "prometheus"; and back (-EINVAL for anything else). */
const char *status_format_name(StatusFormat format);
int status_format_from_name(const char *name);

typedef struct StatusSources {
        const Config *config;
        const Children *children;
        const Accept *accept;
        const Spawner *spawner;
        const Udp *udp;
        uint64_t started_realtime, started_monotonic;
        uint64_t loaded_realtime; /* the last successful load: the start, or the last reload */
        unsigned reloads, reload_failures;
} StatusSources;

/* The report in a malloc'd buffer; the text form lists at most max_live connections. */
int status_report(const StatusSources *src, StatusFormat format, unsigned max_live, char **ret, size_t *ret_len);

/* The one-line summary for STATUS= (systemctl status): active, queued, totals, refusals by reason,
 * listeners. */
void status_summary(const StatusSources *src, char *buf, size_t size);

/* --- the snapshot, for the formatters (status.c, metrics.c) ---------------------------------- */

#define STATUS_TOP_SOURCES 10

typedef struct StatusLive {
        Child child;
        uint64_t in, out, idle_usec;
} StatusLive;

typedef struct StatusSourceCount {
        IpAddr source;
        unsigned count;
} StatusSourceCount;

typedef enum StatusTable {
        STATUS_TABLE_RATE,        /* the per-source rate buckets (accept.c, ratelimit.h) */
        STATUS_TABLE_CONNECTIONS, /* the per-source counts of admitted connections (children.c) */
        _STATUS_TABLE_MAX,
} StatusTable;

/* "rate", "connections" */
const char *status_table_name(StatusTable table);

/* Everything a report shows, taken at one moment, so every form agrees. */
typedef struct StatusSnapshot {
        const StatusSources *src;
        uint64_t now;
        Listener *const *listeners;
        unsigned n_listeners;
        ChildCounters counters;
        unsigned active, pending;
        SpawnerStatus spawner;
        uint64_t refused[_REFUSE_MAX], refused_total;
        unsigned queued, max_connections;
        StatusLive *live;
        unsigned n_live;
        uint64_t bytes_in, bytes_out; /* ended plus live */
        StatusSourceCount top_active[STATUS_TOP_SOURCES];
        unsigned n_top_active;
        RefusalTop refused_sources;
        SourceTableStats tables[_STATUS_TABLE_MAX];
        UdpTotals udp;
        UdpSocketStatus udp_sockets[2 * CONFIG_MAX_LISTEN];
        unsigned n_udp;
        char *effective; /* the configuration in force, as -T prints it */
        size_t effective_len;
} StatusSnapshot;
