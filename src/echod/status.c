/* The status report: what echod is doing right now, for humans (aligned text) and scripts
 * (JSON). Built from the master's counters, the slot table (live bytes and idle times) and the
 * per-source tables; nothing is sampled or estimated except where noted in admit.h. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "build-config.h"
#include "echod/log.h"
#include "echod/manager-internal.h"
#include "shared/hashmap.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

#define TOP_SOURCES 10
#define LOG_CONNECTIONS_MAX 50

typedef struct Live {
        const Child *child;
        uint64_t in, out, idle_usec;
} Live;

typedef struct SourceCount {
        IpAddr source;
        unsigned count;
} SourceCount;

static int by_age(const void *a, const void *b) {
        const Live *x = a, *y = b;
        return x->child->start_usec < y->child->start_usec ? -1 : x->child->start_usec > y->child->start_usec;
}

static int by_count(const void *a, const void *b) {
        const SourceCount *x = a, *y = b;
        return x->count < y->count ? 1 : x->count > y->count ? -1 : 0;
}

/* A snapshot of everything the report shows, so text and JSON come from the same numbers. */
typedef struct Snapshot {
        uint64_t now;
        Live *live;
        unsigned n_live;
        uint64_t bytes_in, bytes_out; /* finished plus live */
        SourceCount top_active[TOP_SOURCES];
        unsigned n_top_active;
        RefusalTop refused;
} Snapshot;

static int snapshot(Manager *m, Snapshot *s) {
        unsigned n = child_table_active(m->children);
        size_t pos = 0;
        const Child *c;

        *s = (Snapshot) { .now = now_usec(), .bytes_in = m->counters.bytes_in, .bytes_out = m->counters.bytes_out };
        s->live = calloc(n ? n : 1, sizeof(Live));
        if (!s->live)
                return -ENOMEM;
        while ((c = child_table_next(m->children, &pos)) && s->n_live < n) {
                int slot = child_table_slot_of(m->children, c->pid);
                SlotShared *sh = child_table_shared(m->children, slot);
                Live *l = &s->live[s->n_live++];
                uint64_t last = atomic_load_explicit(&sh->last_active_usec, memory_order_relaxed);
                l->child = c;
                l->in = atomic_load_explicit(&sh->bytes_in, memory_order_relaxed);
                l->out = atomic_load_explicit(&sh->bytes_out, memory_order_relaxed);
                last = MAX(last, c->start_usec);
                l->idle_usec = s->now > last ? s->now - last : 0;
                s->bytes_in += l->in;
                s->bytes_out += l->out;
        }
        qsort(s->live, s->n_live, sizeof(Live), by_age);

        /* the per-source table holds live (and queued) connections per group: keep the top ones */
        SourceCount all;
        const void *key;
        int32_t v;
        pos = 0;
        while (source_table_next(m->sources, &pos, &key, &v)) {
                all = (SourceCount) { *(const IpAddr *) key, (unsigned) v };
                if (s->n_top_active < TOP_SOURCES)
                        s->top_active[s->n_top_active++] = all;
                else if (all.count > s->top_active[TOP_SOURCES - 1].count)
                        s->top_active[TOP_SOURCES - 1] = all;
                else
                        continue;
                qsort(s->top_active, s->n_top_active, sizeof(SourceCount), by_count);
        }
        s->refused = m->refused_sources;
        refusal_top_sort(&s->refused);
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

static void json_string(FILE *f, const char *s) {
        fputc('"', f);
        for (; *s; s++) {
                unsigned char ch = (unsigned char) *s;
                if (ch == '"' || ch == '\\')
                        fprintf(f, "\\%c", ch);
                else if (ch < 0x20)
                        fprintf(f, "\\u%04x", ch);
                else
                        fputc(ch, f);
        }
        fputc('"', f);
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

static void text_report(Manager *m, const Snapshot *s, FILE *f, unsigned max_live) {
        const Counters *c = &m->counters;
        char a[IPADDR_STR_MAX], b[IPADDR_STR_MAX], t1[64], t2[64], d[32], idle[32];
        unsigned n_shown = MIN(s->n_live, max_live);
        _cleanup_(freep) const IpAddr **col = calloc(MAX(MAX(n_shown, TOP_SOURCES), m->n_listeners) + 1,
                                                      sizeof(IpAddr *));
        int wl, wp, wv, ws;

        if (!col)
                return;

        for (unsigned i = 0; i < m->n_listeners; i++)
                col[i] = &m->listeners[i]->bound;
        wl = width_of(col, m->n_listeners, false, 8);
        for (unsigned i = 0; i < n_shown; i++)
                col[i] = &s->live[i].child->peer;
        wp = width_of(col, n_shown, false, 4);
        for (unsigned i = 0; i < n_shown; i++)
                col[i] = s->live[i].child->proxied ? &s->live[i].child->via : NULL;
        wv = width_of(col, n_shown, false, 3);
        for (unsigned i = 0; i < s->n_top_active; i++)
                col[i] = &s->top_active[i].source;
        ws = width_of(col, s->n_top_active, true, 21);
        for (unsigned i = 0; i < MIN(s->refused.n, TOP_SOURCES); i++)
                col[i] = &s->refused.items[i].source;
        ws = MAX(ws, width_of(col, MIN(s->refused.n, TOP_SOURCES), true, 21));

        format_duration(s->now - m->started_monotonic, d, sizeof(d));
        format_time(m->started_realtime, t1, sizeof(t1));
        format_time(m->loaded_realtime, t2, sizeof(t2));
        fprintf(f, "echod %s, pid %d, up %s (since %s)\n", PACKAGE_VERSION, (int) getpid(), d, t1);
        fprintf(f, "config %s, loaded %s, %u reload%s\n\n", m->config->path, t2, m->reloads,
                m->reloads == 1 ? "" : "s");

        fprintf(f, "%-*s  %-10s %s\n", wl, "LISTENER", "SOCKET", "PROXY");
        for (unsigned i = 0; i < m->n_listeners; i++)
                fprintf(f, "%-*s  %-10s %s\n", wl, ipaddr_format_endpoint(&m->listeners[i]->bound, a),
                        m->listeners[i]->activated ? "activated" : "bound", m->listeners[i]->proxy ? "yes" : "no");

        fprintf(f, "\nconnections  active %u  peak %u  max %u  queued %u\n", s->n_live, c->peak,
                m->config->max_connections, m->queue.n);
        fprintf(f, "totals       accepted %" PRIu64 "  refused %" PRIu64 "  crashed %" PRIu64 "  bytes in %" PRIu64
                   "  bytes out %" PRIu64 "\n",
                c->accepted, refused_total(c), c->crashed, s->bytes_in, s->bytes_out);
        fprintf(f, "refused      ");
        for (int i = 1; i < _REFUSE_MAX; i++)
                fprintf(f, "%s%s %" PRIu64, i > 1 ? "  " : "", refusal_name((Refusal) i), c->refused[i]);
        fputc('\n', f);

        fprintf(f, "\n%-8s %-*s  %-*s %8s %12s %12s %8s\n", "PID", wp, "PEER", wv, "VIA", "AGE", "BYTES IN",
                "BYTES OUT", "IDLE");
        for (unsigned i = 0; i < n_shown; i++) {
                const Live *l = &s->live[i];
                format_duration(s->now - l->child->start_usec, d, sizeof(d));
                format_duration(l->idle_usec, idle, sizeof(idle));
                fprintf(f, "%-8d %-*s  %-*s %8s %12" PRIu64 " %12" PRIu64 " %8s\n", (int) l->child->pid, wp,
                        ipaddr_format_endpoint(&l->child->peer, a), wv,
                        l->child->proxied ? ipaddr_format_endpoint(&l->child->via, b) : "-", d, l->in, l->out, idle);
        }
        if (s->n_live > max_live)
                fprintf(f, "... and %u more\n", s->n_live - max_live);

        fprintf(f, "\n%-*s %8s\n", ws, "TOP SOURCES (ACTIVE)", "ACTIVE");
        for (unsigned i = 0; i < s->n_top_active; i++)
                fprintf(f, "%-*s %8u\n", ws, ipaddr_format_prefix(&s->top_active[i].source, a),
                        s->top_active[i].count);
        fprintf(f, "\n%-*s %8s\n", ws, "TOP SOURCES (REFUSED)", "REFUSED");
        for (unsigned i = 0; i < s->refused.n && i < TOP_SOURCES; i++)
                fprintf(f, "%-*s %8" PRIu64 "\n", ws, ipaddr_format_prefix(&s->refused.items[i].source, a),
                        s->refused.items[i].count);
}

static void json_report(Manager *m, const Snapshot *s, FILE *f) {
        const Counters *c = &m->counters;
        char a[IPADDR_STR_MAX], t[64];

        fprintf(f, "{\"version\":\"%s\",\"pid\":%d,\"uptime_usec\":%" PRIu64 ",", PACKAGE_VERSION, (int) getpid(),
                s->now - m->started_monotonic);
        format_time(m->started_realtime, t, sizeof(t));
        fprintf(f, "\"started\":\"%s\",\"config\":{\"path\":", t);
        json_string(f, m->config->path);
        format_time(m->loaded_realtime, t, sizeof(t));
        fprintf(f, ",\"loaded\":\"%s\",\"reloads\":%u},\"listeners\":[", t, m->reloads);
        for (unsigned i = 0; i < m->n_listeners; i++) {
                const Listener *l = m->listeners[i];
                fprintf(f, "%s{\"address\":\"%s\",\"port\":%u,\"socket\":\"%s\",\"proxy\":%s}", i ? "," : "",
                        ipaddr_format_host(&l->bound, a), l->bound.port, l->activated ? "activated" : "bound",
                        l->proxy ? "true" : "false");
        }
        fprintf(f, "],\"totals\":{\"accepted\":%" PRIu64 ",\"active\":%u,\"peak\":%u,\"max\":%u,\"queued\":%u,"
                   "\"refused\":%" PRIu64 ",\"crashed\":%" PRIu64 ",\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64 "},",
                c->accepted, s->n_live, c->peak, m->config->max_connections, m->queue.n, refused_total(c), c->crashed,
                s->bytes_in, s->bytes_out);
        fprintf(f, "\"refused\":{");
        for (int i = 1; i < _REFUSE_MAX; i++)
                fprintf(f, "%s\"%s\":%" PRIu64, i > 1 ? "," : "", refusal_name((Refusal) i), c->refused[i]);
        fprintf(f, "},\"connections\":[");
        for (unsigned i = 0; i < s->n_live; i++) {
                const Live *l = &s->live[i];
                fprintf(f, "%s{\"pid\":%d,\"peer\":\"%s\"", i ? "," : "", (int) l->child->pid,
                        ipaddr_format_endpoint(&l->child->peer, a));
                if (l->child->proxied)
                        fprintf(f, ",\"via\":\"%s\"", ipaddr_format_endpoint(&l->child->via, a));
                fprintf(f, ",\"age_usec\":%" PRIu64 ",\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64
                           ",\"idle_usec\":%" PRIu64 "}",
                        s->now - l->child->start_usec, l->in, l->out, l->idle_usec);
        }
        fprintf(f, "],\"top_sources_active\":[");
        for (unsigned i = 0; i < s->n_top_active; i++)
                fprintf(f, "%s{\"source\":\"%s\",\"active\":%u}", i ? "," : "",
                        ipaddr_format_prefix(&s->top_active[i].source, a), s->top_active[i].count);
        fprintf(f, "],\"top_sources_refused\":[");
        for (unsigned i = 0; i < s->refused.n && i < TOP_SOURCES; i++)
                fprintf(f, "%s{\"source\":\"%s\",\"refused\":%" PRIu64 "}", i ? "," : "",
                        ipaddr_format_prefix(&s->refused.items[i].source, a), s->refused.items[i].count);
        fprintf(f, "]}\n");
}

int status_format(Manager *m, bool json, char **ret, size_t *ret_len) {
        Snapshot s;
        FILE *f;
        int r;

        r = snapshot(m, &s);
        if (r < 0)
                return r;
        f = open_memstream(ret, ret_len);
        if (!f) {
                free(s.live);
                return -ENOMEM;
        }
        if (json)
                json_report(m, &s, f);
        else
                text_report(m, &s, f, UINT32_MAX);
        r = fclose(f) == 0 ? 0 : -ENOMEM;
        free(s.live);
        return r;
}

void status_log(Manager *m) {
        _cleanup_(freep) char *text = NULL;
        size_t len = 0;
        Snapshot s;
        FILE *f;

        if (snapshot(m, &s) < 0)
                return;
        f = open_memstream(&text, &len);
        if (f) {
                text_report(m, &s, f, LOG_CONNECTIONS_MAX);
                fclose(f);
        }
        free(s.live);
        if (!text)
                return;
        for (char *line = text, *nl; *line; line = nl + 1) {
                nl = strchr(line, '\n');
                if (!nl)
                        nl = line + strlen(line) - 1;
                else
                        *nl = 0;
                if (*line)
                        log_info("status: %s", line);
                if (!nl[1])
                        break;
        }
}
