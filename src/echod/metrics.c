/* The status snapshot as Prometheus metrics (text exposition format 0.0.4): metrics.h says what
 * holds for every family; echod(8), METRICS, lists them. Counters run from echod's start (a
 * reload keeps them); gauges say now. */
#include "echod/metrics.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "build-config.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

#define PREFIX "echod_"

typedef struct Label {
        const char *name, *value;
} Label;

void metrics_escape(FILE *f, const char *s, bool label_value) {
        for (; *s; s++)
                if (*s == '\\')
                        fputs("\\\\", f);
                else if (*s == '\n')
                        fputs("\\n", f);
                else if (*s == '"' && label_value)
                        fputs("\\\"", f);
                else
                        fputc(*s, f);
}

static const char *fmt_u64(char buf[static 24], uint64_t v) {
        snprintf(buf, 24, "%" PRIu64, v);
        return buf;
}

/* Microseconds as seconds, exactly, without trailing zeros: 1500000 is "1.5", 1000 "0.001". */
static const char *fmt_seconds(char buf[static 32], uint64_t usec) {
        int n = snprintf(buf, 32, "%" PRIu64 ".%06" PRIu64, usec / USEC_PER_SEC, usec % USEC_PER_SEC);

        while (n > 0 && buf[n - 1] == '0')
                buf[--n] = 0;
        if (n > 0 && buf[n - 1] == '.')
                buf[--n] = 0;
        return buf;
}

/* Each a fresh buffer that lives as long as the enclosing block. */
#define U64(v) fmt_u64((char[24]) { 0 }, (v))
#define SECONDS(usec) fmt_seconds((char[32]) { 0 }, (usec))

static void family(FILE *f, const char *name, const char *type, const char *help) {
        fprintf(f, "# HELP " PREFIX "%s ", name);
        metrics_escape(f, help, false);
        fprintf(f, "\n# TYPE " PREFIX "%s %s\n", name, type);
}

static void sample_labels(FILE *f, const char *name, const char *suffix, const Label *l, size_t n, const char *value) {
        fprintf(f, PREFIX "%s%s", name, suffix);
        for (size_t i = 0; i < n; i++) {
                fprintf(f, "%s%s=\"", i > 0 ? "," : "{", l[i].name);
                metrics_escape(f, l[i].value, true);
                fputc('"', f);
        }
        fprintf(f, "%s %s\n", n > 0 ? "}" : "", value);
}

static void sample(FILE *f, const char *name, const char *value) {
        sample_labels(f, name, "", NULL, 0, value);
}

/* name{label="value"} v */
static void sample_by(FILE *f, const char *name, const char *label, const char *label_value, const char *value) {
        sample_labels(f, name, "", &(Label) { label, label_value }, 1, value);
}

/* A family of one sample without labels. */
static void single(FILE *f, const char *name, const char *type, const char *help, const char *value) {
        family(f, name, type, help);
        sample(f, name, value);
}

/* Cumulative buckets, +Inf last, then _sum and _count; usec: the values are microseconds, written
 * as seconds. */
static void histogram(FILE *f, const char *name, const char *help, const ChildHistogram *h, bool usec) {
        uint64_t cumulative = 0;

        family(f, name, "histogram", help);
        for (unsigned i = 0; i <= h->n_bounds; i++) {
                cumulative += h->counts[i];
                const char *le = i == h->n_bounds ? "+Inf" : usec ? SECONDS(h->bounds[i]) : U64(h->bounds[i]);
                sample_labels(f, name, "_bucket", &(Label) { "le", le }, 1, U64(cumulative));
        }
        sample_labels(f, name, "_sum", NULL, 0, usec ? SECONDS(h->sum) : U64(h->sum));
        sample_labels(f, name, "_count", NULL, 0, U64(h->count));
}

static void write_process(const StatusSnapshot *s, FILE *f) {
        const StatusSources *src = s->src;

        family(f, "build_info", "gauge", "Always 1: the version of echod running.");
        sample_by(f, "build_info", "version", PACKAGE_VERSION, "1");
        single(f, "start_time_seconds", "gauge", "When echod started, in seconds since the Unix epoch.",
               SECONDS(src->started_realtime));
        family(f, "config_reloads_total", "counter",
               "Configuration reloads (SIGHUP) by result: success (the new configuration is in force) or "
               "failure (the old one stays, whole).");
        sample_by(f, "config_reloads_total", "result", "success", U64(src->reloads));
        sample_by(f, "config_reloads_total", "result", "failure", U64(src->reload_failures));
        single(f, "config_last_reload_success_timestamp_seconds", "gauge",
               "When the configuration in force was loaded (at the start, or by the last successful reload), "
               "in seconds since the Unix epoch.",
               SECONDS(src->loaded_realtime));
}

static void write_listeners(const StatusSnapshot *s, FILE *f) {
        char a[IPADDR_STR_MAX];

        single(f, "listeners", "gauge", "Listening sockets in use.", U64(s->n_listeners));
        family(f, "listener_info", "gauge",
               "Always 1 for each listening socket: its address, whether it expects a PROXY protocol header, "
               "and whether it was bound by echod or passed by systemd (activated).");
        for (unsigned i = 0; i < s->n_listeners; i++) {
                const Listener *l = s->listeners[i];
                Label labels[] = {
                        { "address", ipaddr_format_endpoint(&l->bound, a) },
                        { "proxy", l->proxy ? "yes" : "no" },
                        { "socket", l->activated ? "activated" : "bound" },
                };
                sample_labels(f, "listener_info", "", labels, ELEMENTSOF(labels), "1");
        }
}

static void write_connections(const StatusSnapshot *s, FILE *f) {
        const ChildCounters *c = &s->counters;

        single(f, "connections_accepted_total", "counter", "Connections admitted and handed to a process.",
               U64(c->accepted));
        family(f, "connections_refused_total", "counter",
               "Connections refused, by reason: a limit (capacity, per-source, rate, per-source-rate), the access "
               "list (acl), a PROXY header (proxy), or no process could be made for it (fork-failed, "
               "spawner-failed).");
        for (int i = 1; i < _REFUSE_MAX; i++)
                sample_by(f, "connections_refused_total", "reason", refusal_name((Refusal) i), U64(s->refused[i]));
        single(f, "connections_active", "gauge",
               "Admitted connections whose process is not gone, those not forked yet included: what "
               "max_connections limits.",
               U64(s->active));
        single(f, "connections_pending", "gauge", "Admitted connections handed to echod-spawner, not forked yet.",
               U64(s->pending));
        single(f, "connections_max", "gauge", "max_connections in force.", U64(s->max_connections));
        single(f, "connections_queued", "gauge",
               "Connections over a limit waiting for a slot (the queue, and the short grace wait).", U64(s->queued));
        single(f, "connections_peak", "gauge", "The most connections active at once since echod started.",
               U64(c->peak));
}

static void write_sessions(const StatusSnapshot *s, FILE *f) {
        const ChildCounters *c = &s->counters;

        family(f, "sessions_closed_total", "counter",
               "Connection processes that ended, by how: the echo loop's exit reason, unknown-exit for any other "
               "exit code, killed for death by a signal.");
        for (int i = 0; i < _CHILD_END_MAX; i++)
                sample_by(f, "sessions_closed_total", "reason", child_end_name(i), U64(c->closed_by[i]));
        single(f, "received_bytes_total", "counter",
               "Bytes received from clients (PROXY headers excluded), live connections included.", U64(s->bytes_in));
        single(f, "sent_bytes_total", "counter", "Bytes echoed to clients, live connections included.",
               U64(s->bytes_out));
        histogram(f, "session_duration_seconds",
                  "Time from admission to the end of the connection's process, for the sessions that ended.",
                  &c->duration_usec, true);
        histogram(f, "session_bytes", "Bytes received from the client per session, for the sessions that ended.",
                  &c->bytes, false);
}

static void write_spawner(const StatusSnapshot *s, FILE *f) {
        const SpawnerStatus *sp = &s->spawner;

        single(f, "spawner_restarts_total", "counter",
               "echod-spawner processes started after the first: replacing one that died or was stuck, or for "
               "a reload that changed the sandbox.",
               U64(sp->restarts));
        family(f, "spawner_state", "gauge",
               "1 for the state echod-spawner is in: running, stuck (hand-offs wait and nothing moved for a "
               "second or more), restarting (no process).");
        for (SpawnerState i = SPAWNER_RUNNING; i <= SPAWNER_RESTARTING; i++)
                sample_by(f, "spawner_state", "state", spawner_state_name(i), i == sp->state ? "1" : "0");
        single(f, "spawner_stalled_seconds", "gauge",
               "How long echod-spawner has made no progress while hand-offs wait; 0 when none wait.",
               SECONDS(sp->stalled_usec));
        single(f, "spawner_retiring", "gauge", "Retired echod-spawner processes still finishing what they were sent.",
               U64(sp->retiring));
        single(f, "spawner_handoffs_queued", "gauge", "Admitted connections waiting to be sent to echod-spawner.",
               U64(sp->queued));
        single(f, "spawner_handoffs_in_flight", "gauge",
               "Connections sent to echod-spawner that it has not reported forked yet.", U64(sp->in_flight));
}

static void write_tables(const StatusSnapshot *s, FILE *f) {
        static const struct {
                const char *name, *type, *help;
        } families[] = {
                { "source_table_entries", "gauge",
                  "Sources tracked: rate, the per-source rate buckets (per_source_rate); connections, the "
                  "per-source counts of admitted connections (max_per_source)." },
                { "source_table_capacity", "gauge", "The most sources the table can track." },
                { "source_table_overflows_total", "counter",
                  "New sources that found the table full: not tracked (a rate bucket: let through unlimited)." },
                { "source_table_evictions_total", "counter",
                  "Entries dropped to make room for a new source (rate: only buckets full again, so no state "
                  "is lost)." },
        };

        for (size_t k = 0; k < ELEMENTSOF(families); k++) {
                family(f, families[k].name, families[k].type, families[k].help);
                for (int i = 0; i < _STATUS_TABLE_MAX; i++) {
                        const SourceTableStats *t = &s->tables[i];
                        uint64_t v = k == 0 ? t->entries : k == 1 ? t->capacity : k == 2 ? t->overflows : t->evictions;
                        sample_by(f, families[k].name, "table", status_table_name(i), U64(v));
                }
        }
}

static void write_udp(const StatusSnapshot *s, FILE *f) {
        const UdpTotals *u = &s->udp;
        char a[IPADDR_STR_MAX];
        unsigned restarts = 0;

        single(f, "udp_listeners", "gauge", "UDP sockets served (listen_udp).", U64(s->n_udp));
        family(f, "udp_listener_info", "gauge",
               "Always 1 for each UDP socket: its address, and whether it was bound by echod or passed by systemd.");
        for (unsigned i = 0; i < s->n_udp; i++) {
                Label labels[] = {
                        { "address", ipaddr_format_endpoint(&s->udp_sockets[i].bound, a) },
                        { "socket", s->udp_sockets[i].activated ? "activated" : "bound" },
                };
                sample_labels(f, "udp_listener_info", "", labels, ELEMENTSOF(labels), "1");
                restarts += s->udp_sockets[i].restarts;
        }
        single(f, "udp_datagrams_received_total", "counter", "UDP datagrams received.", U64(u->received));
        single(f, "udp_datagrams_answered_total", "counter", "UDP datagrams echoed back.", U64(u->replied));
        family(f, "udp_datagrams_not_answered_total", "counter",
               "UDP datagrams not echoed, by reason: bad-source, bad-destination, reflector-port, acl, too-large, "
               "source-rate, sources-full, budget, send-failed.");
        for (int i = 0; i < _UDP_DROP_MAX; i++)
                sample_by(f, "udp_datagrams_not_answered_total", "reason", udp_drop_name(i), U64(u->dropped[i]));
        single(f, "udp_received_bytes_total", "counter", "Payload bytes of the UDP datagrams received.",
               U64(u->bytes_in));
        single(f, "udp_sent_bytes_total", "counter", "Payload bytes of the UDP echoes sent.", U64(u->bytes_out));
        single(f, "udp_worker_restarts_total", "counter",
               "UDP workers started again after one ended (a crash) or to apply a new sandbox.", U64(restarts));
}

void metrics_write(const StatusSnapshot *s, FILE *f) {
        write_process(s, f);
        write_listeners(s, f);
        write_connections(s, f);
        write_sessions(s, f);
        write_spawner(s, f);
        write_tables(s, f);
        write_udp(s, f);
}
