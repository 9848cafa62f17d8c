/* The status report: a snapshot of the modules' const views, then text or JSON from it (or the
 * Prometheus text format: metrics.c).
 * Nothing is sampled or estimated except the top refused sources (admit.h says how). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "build-config.h"
#include "echod/log.h"
#include "echod/metrics.h"
#include "echod/status.h"
#include "shared/json.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

#define LOG_CONNECTIONS_MAX 50

static const char *const format_names[_STATUS_FORMAT_MAX] = {
        [STATUS_TEXT] = "text",
        [STATUS_JSON] = "json",
        [STATUS_PROMETHEUS] = "prometheus",
};

const char *status_format_name(StatusFormat format) {
        return format >= 0 && format < _STATUS_FORMAT_MAX ? format_names[format] : NULL;
}

int status_format_from_name(const char *name) {
        for (int i = 0; i < _STATUS_FORMAT_MAX; i++)
                if (streq(name, format_names[i]))
                        return i;
        return -EINVAL;
}

const char *status_table_name(StatusTable table) {
        return table == STATUS_TABLE_RATE ? "rate" : table == STATUS_TABLE_CONNECTIONS ? "connections" : "unknown";
}

static int by_age(const void *a, const void *b) {
        const StatusLive *x = a, *y = b;
        return x->child.start_usec < y->child.start_usec ? -1 : x->child.start_usec > y->child.start_usec;
}

static int by_count(const void *a, const void *b) {
        const StatusSourceCount *x = a, *y = b;
        return x->count < y->count ? 1 : x->count > y->count ? -1 : 0;
}

static void snapshot_done(StatusSnapshot *s) {
        free(s->live);
        free(s->effective);
}

static int snapshot(const StatusSources *src, StatusSnapshot *s) {
        const Refusals *refusals = accept_refusals(src->accept);
        unsigned n = children_active(src->children);
        size_t pos = 0;
        const Child *c;
        int slot;

        *s = (StatusSnapshot) { .src = src, .now = now_usec(), .counters = *children_counters(src->children),
                                .active = n, .pending = children_pending(src->children),
                                .queued = accept_queued(src->accept), .max_connections = src->config->max_connections };
        accept_rate_table(src->accept, &s->tables[STATUS_TABLE_RATE]);
        children_source_table(src->children, &s->tables[STATUS_TABLE_CONNECTIONS]);
        s->listeners = accept_listeners(src->accept, &s->n_listeners);
        spawner_status(src->spawner, &s->spawner);
        memcpy(s->refused, refusals_counts(refusals), sizeof(s->refused));
        s->refused_total = refusals_total(refusals);
        refusals_top(refusals, &s->refused_sources);
        s->bytes_in = s->counters.bytes_in;
        s->bytes_out = s->counters.bytes_out;
        s->udp = *udp_totals(src->udp);
        s->n_udp = MIN(udp_sockets(src->udp, s->udp_sockets, ELEMENTSOF(s->udp_sockets)),
                       (unsigned) ELEMENTSOF(s->udp_sockets));
        FILE *f = open_memstream(&s->effective, &s->effective_len);
        if (!f)
                return -ENOMEM;
        config_dump(src->config, f);
        if (fclose(f) != 0)
                return -ENOMEM;

        s->live = calloc(n ? n : 1, sizeof(StatusLive));
        if (!s->live) {
                snapshot_done(s);
                return -ENOMEM;
        }
        while ((c = children_next(src->children, &pos, &slot)) && s->n_live < n) {
                if (c->pid <= 0)
                        continue; /* handed over, no process yet */
                StatusLive *l = &s->live[s->n_live++];
                l->child = *c;
                children_stat(src->children, slot, &l->in, &l->out, &l->idle_usec);
                /* never idle for longer than it has been admitted */
                l->idle_usec = MIN(l->idle_usec, s->now > c->start_usec ? s->now - c->start_usec : 0);
                s->bytes_in += l->in;
                s->bytes_out += l->out;
        }
        qsort(s->live, s->n_live, sizeof(StatusLive), by_age);

        /* the per-source counts of admitted connections: keep the top ones */
        StatusSourceCount sc;
        pos = 0;
        while (children_next_source(src->children, &pos, &sc.source, &sc.count)) {
                if (s->n_top_active < STATUS_TOP_SOURCES)
                        s->top_active[s->n_top_active++] = sc;
                else if (sc.count > s->top_active[STATUS_TOP_SOURCES - 1].count)
                        s->top_active[STATUS_TOP_SOURCES - 1] = sc;
                else
                        continue;
                qsort(s->top_active, s->n_top_active, sizeof(StatusSourceCount), by_count);
        }
        return 0;
}

static void format_duration(uint64_t usec, char *buf, size_t size) {
        uint64_t sec = usec / USEC_PER_SEC;

        if (sec >= 86400)
                snprintf(buf, size, "%" PRIu64 "d%02" PRIu64 "h", sec / 86400, sec % 86400 / 3600);
        else if (sec >= 3600)
                snprintf(buf, size, "%" PRIu64 "h%02" PRIu64 "m", sec / 3600, sec % 3600 / 60);
        else if (sec >= 60)
                snprintf(buf, size, "%" PRIu64 "m%02" PRIu64 "s", sec / 60, sec % 60);
        else
                snprintf(buf, size, "%" PRIu64 ".%01" PRIu64 "s", sec, usec / 100000 % 10);
}

static void format_time(uint64_t realtime_usec, char *buf, size_t size) {
        time_t t = (time_t) (realtime_usec / USEC_PER_SEC);
        struct tm tm;

        strftime(buf, size, "%Y-%m-%d %H:%M:%S UTC", gmtime_r(&t, &tm));
}

/* Column width: the longest entry, or the header. */
static int width_of(const IpAddr *const *addrs, unsigned n, bool prefix, int header) {
        char a[IPADDR_STR_MAX];
        int w = header;

        for (unsigned i = 0; i < n; i++)
                if (addrs[i])
                        w = MAX(w, (int) strlen(prefix ? ipaddr_format_prefix(addrs[i], a)
                                                       : ipaddr_format_endpoint(addrs[i], a)));
        return w;
}

static void text_udp(const StatusSnapshot *s, FILE *f) {
        const UdpTotals *u = &s->udp;
        char a[IPADDR_STR_MAX];
        const IpAddr *col[ELEMENTSOF(s->udp_sockets)];
        int w;

        if (s->n_udp == 0 && u->received == 0)
                return;
        for (unsigned i = 0; i < s->n_udp; i++)
                col[i] = &s->udp_sockets[i].bound;
        w = width_of(col, s->n_udp, false, 12);
        fprintf(f, "\n%-*s  %-10s %-8s %-8s %s\n", w, "UDP LISTENER", "SOCKET", "WORKER", "POLICY", "RESTARTS");
        for (unsigned i = 0; i < s->n_udp; i++) {
                const UdpSocketStatus *k = &s->udp_sockets[i];
                char pid[16];
                snprintf(pid, sizeof(pid), "%d", (int) k->pid);
                fprintf(f, "%-*s  %-10s %-8s %-8s %u\n", w, ipaddr_format_endpoint(&k->bound, a),
                        k->activated ? "activated" : "bound", k->pid > 0 ? pid : "-", k->current ? "current" : "pending",
                        k->restarts);
        }
        fprintf(f, "udp          received %" PRIu64 "  answered %" PRIu64 "  bytes in %" PRIu64 "  bytes out %" PRIu64
                   "\nnot answered ",
                u->received, u->replied, u->bytes_in, u->bytes_out);
        for (int i = 0; i < _UDP_DROP_MAX; i++)
                fprintf(f, "%s%s %" PRIu64, i ? "  " : "", udp_drop_name(i), u->dropped[i]);
        fputc('\n', f);
}

static void json_udp(const StatusSnapshot *s, JsonWriter *j) {
        const UdpTotals *u = &s->udp;
        char a[IPADDR_STR_MAX];

        json_object_open(j, "udp");
        json_array_open(j, "listeners");
        for (unsigned i = 0; i < s->n_udp; i++) {
                const UdpSocketStatus *k = &s->udp_sockets[i];
                json_object_open(j, NULL);
                json_str(j, "address", ipaddr_format_host(&k->bound, a));
                json_unsigned(j, "port", k->bound.port);
                json_str(j, "socket", k->activated ? "activated" : "bound");
                json_i64(j, "worker_pid", k->pid);
                json_bool(j, "policy_current", k->current);
                json_unsigned(j, "restarts", k->restarts);
                json_object_close(j);
        }
        json_array_close(j);
        json_u64(j, "received", u->received);
        json_u64(j, "answered", u->replied);
        json_u64(j, "bytes_in", u->bytes_in);
        json_u64(j, "bytes_out", u->bytes_out);
        json_object_open(j, "not_answered");
        for (int i = 0; i < _UDP_DROP_MAX; i++)
                json_u64(j, udp_drop_name(i), u->dropped[i]);
        json_object_close(j);
        json_object_close(j);
}

static void text_report(const StatusSnapshot *s, FILE *f, unsigned max_live) {
        const StatusSources *src = s->src;
        const ChildCounters *c = &s->counters;
        char a[IPADDR_STR_MAX], b[IPADDR_STR_MAX], t1[64], t2[64], d[32], idle[32];
        unsigned n_shown = MIN(s->n_live, max_live);
        _cleanup_(freep) const IpAddr **col = calloc(MAX(MAX(n_shown, STATUS_TOP_SOURCES), s->n_listeners) + 1,
                                                      sizeof(IpAddr *));
        int wl, wp, wv, ws;

        if (!col)
                return;

        for (unsigned i = 0; i < s->n_listeners; i++)
                col[i] = &s->listeners[i]->bound;
        wl = width_of(col, s->n_listeners, false, 8);
        for (unsigned i = 0; i < n_shown; i++)
                col[i] = &s->live[i].child.peer;
        wp = width_of(col, n_shown, false, 4);
        for (unsigned i = 0; i < n_shown; i++)
                col[i] = s->live[i].child.proxied ? &s->live[i].child.via : NULL;
        wv = width_of(col, n_shown, false, 3);
        for (unsigned i = 0; i < s->n_top_active; i++)
                col[i] = &s->top_active[i].source;
        ws = width_of(col, s->n_top_active, true, 21);
        for (unsigned i = 0; i < MIN(s->refused_sources.n, STATUS_TOP_SOURCES); i++)
                col[i] = &s->refused_sources.items[i].source;
        ws = MAX(ws, width_of(col, MIN(s->refused_sources.n, STATUS_TOP_SOURCES), true, 21));

        format_duration(s->now - src->started_monotonic, d, sizeof(d));
        format_time(src->started_realtime, t1, sizeof(t1));
        format_time(src->loaded_realtime, t2, sizeof(t2));
        fprintf(f, "echod %s, pid %d, up %s (since %s)\n", PACKAGE_VERSION, (int) getpid(), d, t1);
        fprintf(f, "config %s, loaded %s, %u reload%s", src->config->path, t2, src->reloads,
                src->reloads == 1 ? "" : "s");
        if (src->reload_failures > 0)
                fprintf(f, ", %u failed", src->reload_failures);
        fputc('\n', f);
        if (s->spawner.pid > 0) {
                char stalled[80] = "";
                if (s->spawner.state == SPAWNER_STUCK) {
                        format_duration(s->spawner.stalled_usec, d, sizeof(d));
                        snprintf(stalled, sizeof(stalled), " (stuck: no progress for %s)", d);
                }
                fprintf(f, "spawner pid %d%s, %u restart%s, %u hand-offs queued, %u in flight\n\n",
                        (int) s->spawner.pid, stalled, s->spawner.restarts, s->spawner.restarts == 1 ? "" : "s",
                        s->spawner.queued, s->spawner.in_flight);
        } else
                fprintf(f, "spawner not running (restarting), %u restart%s, %u hand-offs queued\n\n",
                        s->spawner.restarts, s->spawner.restarts == 1 ? "" : "s", s->spawner.queued);

        fprintf(f, "%-*s  %-10s %s\n", wl, "LISTENER", "SOCKET", "PROXY");
        for (unsigned i = 0; i < s->n_listeners; i++)
                fprintf(f, "%-*s  %-10s %s\n", wl, ipaddr_format_endpoint(&s->listeners[i]->bound, a),
                        s->listeners[i]->activated ? "activated" : "bound", s->listeners[i]->proxy ? "yes" : "no");

        fprintf(f, "\nconnections  active %u  peak %u  max %u  queued %u\n", s->active, c->peak,
                s->max_connections, s->queued);
        fprintf(f, "totals       accepted %" PRIu64 "  refused %" PRIu64 "  crashed %" PRIu64 "  bytes in %" PRIu64
                   "  bytes out %" PRIu64 "\n",
                c->accepted, s->refused_total, c->crashed, s->bytes_in, s->bytes_out);
        fprintf(f, "refused      ");
        for (int i = 1; i < _REFUSE_MAX; i++)
                fprintf(f, "%s%s %" PRIu64, i > 1 ? "  " : "", refusal_name((Refusal) i), s->refused[i]);
        fprintf(f, "\nclosed       %s", c->closed ? "" : "-");
        for (int i = 0, n = 0; i < _CHILD_END_MAX; i++)
                if (c->closed_by[i] > 0)
                        fprintf(f, "%s%s %" PRIu64, n++ ? "  " : "", child_end_name(i), c->closed_by[i]);
        fprintf(f, "\ntables       ");
        for (int i = 0; i < _STATUS_TABLE_MAX; i++)
                fprintf(f, "%s%s %u/%u (overflows %" PRIu64 ", evictions %" PRIu64 ")", i ? "  " : "",
                        status_table_name(i), s->tables[i].entries, s->tables[i].capacity, s->tables[i].overflows,
                        s->tables[i].evictions);
        fputc('\n', f);

        text_udp(s, f);

        fprintf(f, "\n%-8s %-*s  %-*s %8s %12s %12s %8s\n", "PID", wp, "PEER", wv, "VIA", "AGE", "BYTES IN",
                "BYTES OUT", "IDLE");
        for (unsigned i = 0; i < n_shown; i++) {
                const StatusLive *l = &s->live[i];
                format_duration(s->now - l->child.start_usec, d, sizeof(d));
                format_duration(l->idle_usec, idle, sizeof(idle));
                fprintf(f, "%-8d %-*s  %-*s %8s %12" PRIu64 " %12" PRIu64 " %8s\n", (int) l->child.pid, wp,
                        ipaddr_format_endpoint(&l->child.peer, a), wv,
                        l->child.proxied ? ipaddr_format_endpoint(&l->child.via, b) : "-", d, l->in, l->out, idle);
        }
        if (s->n_live > max_live)
                fprintf(f, "... and %u more\n", s->n_live - max_live);

        fprintf(f, "\n%-*s %8s\n", ws, "TOP SOURCES (ACTIVE)", "ACTIVE");
        for (unsigned i = 0; i < s->n_top_active; i++)
                fprintf(f, "%-*s %8u\n", ws, ipaddr_format_prefix(&s->top_active[i].source, a),
                        s->top_active[i].count);
        fprintf(f, "\n%-*s %8s\n", ws, "TOP SOURCES (REFUSED)", "REFUSED");
        for (unsigned i = 0; i < s->refused_sources.n && i < STATUS_TOP_SOURCES; i++)
                fprintf(f, "%-*s %8" PRIu64 "\n", ws, ipaddr_format_prefix(&s->refused_sources.items[i].source, a),
                        s->refused_sources.items[i].count);
}

/* Upper bounds, and the count in each bucket (not cumulative; the last one is above every bound). */
static void json_histogram(JsonWriter *j, const char *key, const ChildHistogram *h) {
        json_object_open(j, key);
        json_array_open(j, "bounds");
        for (unsigned i = 0; i < h->n_bounds; i++)
                json_u64(j, NULL, h->bounds[i]);
        json_array_close(j);
        json_array_open(j, "counts");
        for (unsigned i = 0; i <= h->n_bounds; i++)
                json_u64(j, NULL, h->counts[i]);
        json_array_close(j);
        json_u64(j, "sum", h->sum);
        json_u64(j, "count", h->count);
        json_object_close(j);
}

static void json_report(const StatusSnapshot *s, FILE *f) {
        const StatusSources *src = s->src;
        const ChildCounters *c = &s->counters;
        char a[IPADDR_STR_MAX], t[64];
        JsonWriter j;

        json_init(&j, f, false);
        json_object_open(&j, NULL);
        json_str(&j, "version", PACKAGE_VERSION);
        json_i64(&j, "pid", getpid());
        json_u64(&j, "uptime_usec", s->now - src->started_monotonic);
        format_time(src->started_realtime, t, sizeof(t));
        json_str(&j, "started", t);
        json_u64(&j, "started_unix_usec", src->started_realtime);

        json_object_open(&j, "config");
        json_str(&j, "path", src->config->path);
        format_time(src->loaded_realtime, t, sizeof(t));
        json_str(&j, "loaded", t);
        json_unsigned(&j, "reloads", src->reloads);
        json_unsigned(&j, "reload_failures", src->reload_failures);
        json_u64(&j, "loaded_unix_usec", src->loaded_realtime);
        json_str(&j, "effective", s->effective);
        json_object_close(&j);

        json_object_open(&j, "spawner");
        json_str(&j, "state", spawner_state_name(s->spawner.state));
        json_u64(&j, "stalled_usec", s->spawner.stalled_usec);
        json_i64(&j, "pid", s->spawner.pid);
        json_unsigned(&j, "restarts", s->spawner.restarts);
        json_unsigned(&j, "retiring", s->spawner.retiring);
        json_unsigned(&j, "queued", s->spawner.queued);
        json_unsigned(&j, "in_flight", s->spawner.in_flight);
        json_object_close(&j);

        json_array_open(&j, "listeners");
        for (unsigned i = 0; i < s->n_listeners; i++) {
                const Listener *l = s->listeners[i];
                json_object_open(&j, NULL);
                json_str(&j, "address", ipaddr_format_host(&l->bound, a));
                json_unsigned(&j, "port", l->bound.port);
                json_str(&j, "socket", l->activated ? "activated" : "bound");
                json_bool(&j, "proxy", l->proxy);
                json_object_close(&j);
        }
        json_array_close(&j);

        json_object_open(&j, "totals");
        json_u64(&j, "accepted", c->accepted);
        json_unsigned(&j, "active", s->active);
        json_unsigned(&j, "pending", s->pending);
        json_unsigned(&j, "peak", c->peak);
        json_unsigned(&j, "max", s->max_connections);
        json_unsigned(&j, "queued", s->queued);
        json_u64(&j, "refused", s->refused_total);
        json_u64(&j, "closed", c->closed);
        json_u64(&j, "crashed", c->crashed);
        json_u64(&j, "bytes_in", s->bytes_in);
        json_u64(&j, "bytes_out", s->bytes_out);
        json_object_close(&j);

        json_object_open(&j, "refused");
        for (int i = 1; i < _REFUSE_MAX; i++)
                json_u64(&j, refusal_name((Refusal) i), s->refused[i]);
        json_object_close(&j);

        json_object_open(&j, "closed");
        for (int i = 0; i < _CHILD_END_MAX; i++)
                json_u64(&j, child_end_name(i), c->closed_by[i]);
        json_object_close(&j);

        json_object_open(&j, "histograms");
        json_histogram(&j, "session_duration_usec", &c->duration_usec);
        json_histogram(&j, "session_bytes", &c->bytes);
        json_object_close(&j);

        json_object_open(&j, "source_tables");
        for (int i = 0; i < _STATUS_TABLE_MAX; i++) {
                json_object_open(&j, status_table_name(i));
                json_unsigned(&j, "entries", s->tables[i].entries);
                json_unsigned(&j, "capacity", s->tables[i].capacity);
                json_u64(&j, "overflows", s->tables[i].overflows);
                json_u64(&j, "evictions", s->tables[i].evictions);
                json_object_close(&j);
        }
        json_object_close(&j);

        json_udp(s, &j);

        json_array_open(&j, "connections");
        for (unsigned i = 0; i < s->n_live; i++) {
                const StatusLive *l = &s->live[i];
                json_object_open(&j, NULL);
                json_i64(&j, "pid", l->child.pid);
                json_str(&j, "peer", ipaddr_format_endpoint(&l->child.peer, a));
                if (l->child.proxied)
                        json_str(&j, "via", ipaddr_format_endpoint(&l->child.via, a));
                json_u64(&j, "age_usec", s->now - l->child.start_usec);
                json_u64(&j, "bytes_in", l->in);
                json_u64(&j, "bytes_out", l->out);
                json_u64(&j, "idle_usec", l->idle_usec);
                json_object_close(&j);
        }
        json_array_close(&j);

        json_array_open(&j, "top_sources_active");
        for (unsigned i = 0; i < s->n_top_active; i++) {
                json_object_open(&j, NULL);
                json_str(&j, "source", ipaddr_format_prefix(&s->top_active[i].source, a));
                json_unsigned(&j, "active", s->top_active[i].count);
                json_object_close(&j);
        }
        json_array_close(&j);

        json_array_open(&j, "top_sources_refused");
        for (unsigned i = 0; i < s->refused_sources.n && i < STATUS_TOP_SOURCES; i++) {
                json_object_open(&j, NULL);
                json_str(&j, "source", ipaddr_format_prefix(&s->refused_sources.items[i].source, a));
                json_u64(&j, "refused", s->refused_sources.items[i].count);
                json_object_close(&j);
        }
        json_array_close(&j);
        json_object_close(&j);
}

int status_report(const StatusSources *src, StatusFormat format, unsigned max_live, char **ret, size_t *ret_len) {
        StatusSnapshot s;
        FILE *f;
        int r;

        r = snapshot(src, &s);
        if (r < 0)
                return r;
        f = open_memstream(ret, ret_len);
        if (!f) {
                snapshot_done(&s);
                return -ENOMEM;
        }
        if (format == STATUS_JSON)
                json_report(&s, f);
        else if (format == STATUS_PROMETHEUS)
                metrics_write(&s, f);
        else
                text_report(&s, f, max_live);
        r = fclose(f) == 0 ? 0 : -ENOMEM;
        snapshot_done(&s);
        return r;
}

/* " UDP 5 answered, 2 not (on 127.0.0.1:7 [::1]:7);" when there are UDP sockets: before the TCP
 * listeners, which end the line (tools read them from there). */
static void summary_udp(const StatusSources *src, char *buf, size_t size) {
        UdpSocketStatus us[2 * CONFIG_MAX_LISTEN];
        unsigned n_udp = MIN(udp_sockets(src->udp, us, ELEMENTSOF(us)), (unsigned) ELEMENTSOF(us));
        const UdpTotals *u = udp_totals(src->udp);
        uint64_t dropped = 0;
        int n;

        buf[0] = 0;
        if (n_udp == 0)
                return;
        for (int i = 0; i < _UDP_DROP_MAX; i++)
                dropped += u->dropped[i];
        n = snprintf(buf, size, " UDP %llu answered, %llu not (on", (unsigned long long) u->replied,
                     (unsigned long long) dropped);
        for (unsigned i = 0; i < n_udp && n > 0 && (size_t) n < size; i++) {
                char a[IPADDR_STR_MAX];
                n += snprintf(buf + n, size - (size_t) n, " %s", ipaddr_format_endpoint(&us[i].bound, a));
        }
        if (n > 0 && (size_t) n < size)
                snprintf(buf + n, size - (size_t) n, ");");
}

void status_summary(const StatusSources *src, char *buf, size_t size) {
        char udp[256];

        summary_udp(src, udp, sizeof(udp));
        const uint64_t *refused = refusals_counts(accept_refusals(src->accept));
        const ChildCounters *c = children_counters(src->children);
        unsigned n_listeners;
        Listener *const *l = accept_listeners(src->accept, &n_listeners);
        int n = snprintf(buf, size,
                         "%u active (peak %u), %u queued, %llu accepted, %llu refused (capacity %llu, "
                         "per-source %llu, rate %llu, per-source-rate %llu, acl %llu, proxy %llu, fork %llu, spawner %llu), "
                         "%llu crashed;%s listening on",
                         children_active(src->children), c->peak, accept_queued(src->accept),
                         (unsigned long long) c->accepted,
                         (unsigned long long) refusals_total(accept_refusals(src->accept)),
                         (unsigned long long) refused[REFUSE_CAPACITY], (unsigned long long) refused[REFUSE_PER_SOURCE],
                         (unsigned long long) refused[REFUSE_RATE], (unsigned long long) refused[REFUSE_PER_SOURCE_RATE],
                         (unsigned long long) refused[REFUSE_ACL], (unsigned long long) refused[REFUSE_PROXY],
                         (unsigned long long) refused[REFUSE_FORK], (unsigned long long) refused[REFUSE_SPAWNER],
                         (unsigned long long) c->crashed, udp);
        for (unsigned i = 0; i < n_listeners && n > 0 && (size_t) n < size; i++) {
                char a[IPADDR_STR_MAX];
                n += snprintf(buf + n, size - (size_t) n, " %s", ipaddr_format_endpoint(&l[i]->bound, a));
        }

}
