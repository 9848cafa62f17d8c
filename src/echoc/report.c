/* echoc's output: ping-style text, iperf3-shaped JSON ("start", "intervals", "end", "error";
 * undefined statistics are null, never NaN) and Nagios plugin lines with perfdata. */
#include "echoc/report.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "build-config.h"
#include "shared/json.h"
#include "shared/macro.h"

void report_error(const char *fmt, ...) {
        va_list ap;

        fputs("echoc: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}

/* ---- JSON (shared/json.h), pretty-printed on stdout ---- */

double report_percentile_ms(const Histogram *h, double p) {
        return h->count > 0 ? (double) hist_percentile(h, p) / 1e6 : NAN;
}

/* "key": {"min": …, "avg": …, "max": …, "mdev": …} in ms, null where undefined; with a
 * histogram also "p50", "p90", "p99" */
void report_json_rtt(JsonWriter *j, const char *key, const RttStats *st, const Histogram *h) {
        json_object_open(j, key);
        json_double(j, "min", rtt_min(st));
        json_double(j, "avg", rtt_avg(st));
        json_double(j, "max", rtt_max(st));
        json_double(j, "mdev", rtt_mdev(st));
        if (h) {
                json_double(j, "p50", report_percentile_ms(h, 50));
                json_double(j, "p90", report_percentile_ms(h, 90));
                json_double(j, "p99", report_percentile_ms(h, 99));
        }
        json_object_close(j);
}

static double usec_to_sec(uint64_t usec) {
        return (double) usec / 1e6;
}

/* null for "not set" (0) where 0 means none/unlimited */
static void json_sec_or_null(JsonWriter *j, const char *key, uint64_t usec) {
        json_double(j, key, usec > 0 ? usec_to_sec(usec) : NAN);
}

static const char *mode_name(Mode m) {
        return m == MODE_PING ? "ping" : m == MODE_LOAD ? "load" : "stream";
}

void report_json_start(JsonWriter *j, const Session *s) {
        const Options *o = s->opts;
        char buf[IPADDR_STR_MAX], tbuf[64];
        time_t t = (time_t) (s->start_wall_usec / 1000000);
        struct tm tm;

        json_init(j, stdout, true);
        json_object_open(j, NULL);
        json_object_open(j, "start");
        json_str(j, "version", "echoc " PACKAGE_VERSION);

        json_object_open(j, "timestamp");
        strftime(tbuf, sizeof(tbuf), "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&t, &tm));
        json_str(j, "time", tbuf);
        json_u64(j, "timesecs", (uint64_t) t);
        json_object_close(j);

        json_object_open(j, "connecting_to");
        json_str(j, "host", o->host);
        if (s->target.n_addrs > 0)
                json_u64(j, "port", s->target.addrs[0].port);
        else
                json_str(j, "port", o->port);
        json_object_close(j);

        json_array_open(j, "connected");
        if (s->connected) {
                json_object_open(j, NULL);
                json_str(j, "local_host", ipaddr_format_host(&s->local, buf));
                json_u64(j, "local_port", s->local.port);
                json_str(j, "remote_host", ipaddr_format_host(&s->remote, buf));
                json_u64(j, "remote_port", s->remote.port);
                json_object_close(j);
        }
        json_array_close(j);

        json_object_open(j, "test_start");
        json_str(j, "protocol", o->udp ? "udp" : "tcp");
        json_str(j, "mode", mode_name(o->mode));
        if (!o->udp)
                json_str(j, "proxy", o->proxy_version == 1 ? "v1" : o->proxy_version == 2 ? "v2" : NULL);
        json_sec_or_null(j, "timeout", o->timeout_usec);
        if (o->mode == MODE_PING) {
                json_u64(j, "size", o->size);
                if (o->count > 0)
                        json_u64(j, "count", o->count);
                else
                        json_null(j, "count");
                json_double(j, "interval", usec_to_sec(o->interval_usec));
                json_sec_or_null(j, "deadline", o->deadline_usec);
                if (!o->udp)
                        json_bool(j, "connect_per_probe", o->connect_per_probe);
        } else if (o->mode == MODE_LOAD) {
                json_u64(j, "size", o->size);
                if (!o->udp)
                        json_u64(j, "connections", o->connections);
                json_double(j, "duration", usec_to_sec(o->duration_usec));
                if (o->rate > 0) /* TCP: new connections/s; UDP: datagrams/s */
                        json_u64(j, "rate", o->rate);
                else
                        json_null(j, "rate");
                if (o->udp)
                        json_u64(j, "window", o->window);
                else
                        json_bool(j, "persistent", o->persistent);
        }
        json_object_close(j);
        json_object_close(j);
}

void report_json_finish(JsonWriter *j, const Session *s) {
        json_str(j, "error", s->error[0] ? s->error : NULL);
        json_object_close(j);
        fflush(stdout);
}

/* "host:port" for headings, with brackets around an IPv6 literal. */
const char *report_target_name(const Session *s, char *buf, size_t size) {
        const char *h = s->opts->host;
        bool v6 = strchr(h, ':') != NULL;
        unsigned port = s->target.n_addrs > 0 ? s->target.addrs[0].port : 0;

        if (port > 0)
                snprintf(buf, size, "%s%s%s:%u", v6 ? "[" : "", h, v6 ? "]" : "", port);
        else
                snprintf(buf, size, "%s%s%s:%s", v6 ? "[" : "", h, v6 ? "]" : "", s->opts->port);
        return buf;
}

/* ---- Nagios: "ECHO STATE - text|rtt=...ms;W;C;0 loss=...%;W;C;0;100" ---- */

/* Plain decimal, no exponent, no trailing zeros: 0.5, 100, 0.001. */
static void perf_threshold(char *buf, size_t size, double v) {
        if (isnan(v)) {
                buf[0] = 0;
                return;
        }
        snprintf(buf, size, "%.3f", v);
        char *e = buf + strlen(buf);
        while (e > buf && e[-1] == '0')
                *--e = 0;
        if (e > buf && e[-1] == '.')
                *--e = 0;
}

int report_nagios(const Session *s, const char *text, double rtt_ms, double loss, uint64_t corrupted, int status) {
        static const char *const names[] = { "OK", "WARNING", "CRITICAL", "UNKNOWN" };
        const Options *o = s->opts;
        double warn_loss = isnan(o->warning_loss) ? 0 : o->warning_loss;
        char w[32], c[32], wl[32], cl[32];
        int st = NAGIOS_OK;

        if (status == EXIT_ERROR && s->error[0])
                st = NAGIOS_CRITICAL;
        else {
                if (isfinite(loss) && loss > warn_loss)
                        st = NAGIOS_WARNING;
                if (isfinite(rtt_ms) && !isnan(o->warning_rtt_ms) && rtt_ms > o->warning_rtt_ms)
                        st = NAGIOS_WARNING;
                if (isfinite(loss) && !isnan(o->critical_loss) && loss > o->critical_loss)
                        st = NAGIOS_CRITICAL;
                if (isfinite(rtt_ms) && !isnan(o->critical_rtt_ms) && rtt_ms > o->critical_rtt_ms)
                        st = NAGIOS_CRITICAL;
                if (corrupted > 0 || !isfinite(rtt_ms) || (isfinite(loss) && loss >= 100))
                        st = NAGIOS_CRITICAL;
        }

        perf_threshold(w, sizeof(w), o->warning_rtt_ms);
        perf_threshold(c, sizeof(c), o->critical_rtt_ms);
        perf_threshold(wl, sizeof(wl), warn_loss);
        perf_threshold(cl, sizeof(cl), o->critical_loss);

        printf("ECHO %s - %s|", names[st], s->error[0] ? s->error : text);
        if (isfinite(rtt_ms))
                printf("rtt=%.3fms;%s;%s;0", rtt_ms, w, c);
        else
                printf("rtt=U;%s;%s;0", w, c);
        if (isfinite(loss))
                printf(" loss=%.1f%%;%s;%s;0;100\n", loss, wl, cl);
        else
                printf(" loss=U;%s;%s;0;100\n", wl, cl);
        fflush(stdout);
        return st;
}

/* ---- stream ---- */

int report_stream(const Session *s, const StreamResult *r, int status) {
        double secs = usec_to_sec(r->elapsed_usec);
        double bps = r->elapsed_usec > 0 ? (double) r->echoed * 8 / secs : NAN;

        if (s->opts->output == OUTPUT_JSON) {
                JsonWriter j;

                report_json_start(&j, s);
                json_array_open(&j, "intervals");
                json_array_close(&j);
                json_object_open(&j, "end");
                json_u64(&j, "bytes_sent", r->sent);
                json_u64(&j, "bytes_echoed", r->echoed);
                json_double(&j, "seconds", secs);
                json_double(&j, "bits_per_second", bps);
                json_bool(&j, "intact", status == EXIT_INTACT);
                if (r->mismatch)
                        json_u64(&j, "mismatch_offset", r->mismatch_offset);
                else
                        json_null(&j, "mismatch_offset");
                json_object_close(&j);
                report_json_finish(&j, s);
                return status;
        }
        if (s->error[0])
                report_error("%s", s->error);
        if (s->opts->verbose)
                fprintf(stderr, "echoc: %llu bytes sent, %llu echoed intact in %.3f s (%.1f MB/s)\n",
                        (unsigned long long) r->sent, (unsigned long long) r->echoed, secs,
                        secs > 0 ? (double) r->echoed / secs / 1e6 : 0.0);
        return status;
}

/* ---- ping ---- */

void report_ping_start(const Session *s) {
        char buf[IPADDR_STR_MAX];

        if (s->opts->output != OUTPUT_TEXT)
                return;
        printf("ECHO %s (%s): %zu bytes per probe%s\n", s->opts->host, ipaddr_format_endpoint(&s->remote, buf),
               s->opts->size,
               s->opts->udp ? " over UDP" : s->opts->connect_per_probe ? ", new connection per probe" : "");
        fflush(stdout);
}

void report_ping_probe(const Session *s, const Probe *p) {
        char buf[IPADDR_STR_MAX], conn[48] = "", time[32] = "";

        if (s->opts->output != OUTPUT_TEXT || s->opts->quiet)
                return;
        ipaddr_format_endpoint(&s->remote, buf);
        if (isfinite(p->connect_ms))
                snprintf(conn, sizeof(conn), " connect=%.3f ms", p->connect_ms);
        if (isfinite(p->rtt_ms))
                snprintf(time, sizeof(time), " time=%.3f ms", p->rtt_ms);
        switch (p->status) {
        case PROBE_OK:
                /* UDP marks a reply as ping(8) does */
                printf("%zu bytes from %s: seq=%llu%s%s%s%s%s\n", p->bytes, buf, (unsigned long long) p->seq, conn, time,
                       p->duplicate ? " (DUP!)" : "", p->reordered ? " (reordered)" : "", p->late ? " (late)" : "");
                break;
        case PROBE_CORRUPT:
                printf("%zu bytes from %s: seq=%llu%s%s CORRUPTED (first difference at byte %llu)\n", p->bytes, buf,
                       (unsigned long long) p->seq, conn, time, (unsigned long long) p->mismatch_offset);
                break;
        case PROBE_TIMEOUT:
                printf("no echo from %s: seq=%llu%s timeout=%.3f s\n", buf, (unsigned long long) p->seq, conn,
                       usec_to_sec(s->opts->timeout_usec));
                break;
        case PROBE_FAILED:
                printf("error from %s: seq=%llu%s %s%s\n", buf, (unsigned long long) p->seq, conn, strerror(-p->error),
                       s->opts->udp && p->error == -ECONNREFUSED ? " (ICMP port unreachable)" : "");
                break;
        }
        fflush(stdout);
}

static const char *probe_status_name(ProbeStatus st) {
        static const char *const names[] = { "ok", "corrupted", "timeout", "error" };
        return names[st];
}

/* One probe of ping mode's "intervals": TCP adds connect_ms, UDP what else came back. */
void report_json_probe(JsonWriter *j, const Session *s, const Probe *p) {
        json_object_open(j, NULL);
        json_u64(j, "seq", p->seq);
        json_str(j, "status", probe_status_name(p->status));
        json_u64(j, "bytes", p->bytes);
        if (!s->opts->udp)
                json_double(j, "connect_ms", p->connect_ms);
        json_double(j, "rtt_ms", p->rtt_ms);
        if (p->status == PROBE_CORRUPT)
                json_u64(j, "mismatch_offset", p->mismatch_offset);
        else
                json_null(j, "mismatch_offset");
        json_str(j, "error", p->status == PROBE_FAILED ? strerror(-p->error) : NULL);
        if (s->opts->udp) {
                json_u64(j, "duplicates", p->duplicates);
                json_bool(j, "reordered", p->reordered);
                json_bool(j, "late", p->late);
        }
        json_object_close(j);
}

static double ping_loss(const PingResult *r) {
        return r->sent > 0 ? (double) (r->sent - r->echoed - r->corrupted) * 100.0 / (double) r->sent : NAN;
}

int report_ping_end(const Session *s, const PingResult *r, int status) {
        const Options *o = s->opts;
        char name[320], text[512];
        double loss = ping_loss(r);

        if (o->output == OUTPUT_JSON) {
                JsonWriter j;

                report_json_start(&j, s);
                json_array_open(&j, "intervals");
                for (size_t i = 0; i < r->n_probes; i++)
                        report_json_probe(&j, s, r->probes + i);
                json_array_close(&j);
                json_object_open(&j, "end");
                json_u64(&j, "sent", r->sent);
                json_u64(&j, "echoed", r->echoed);
                json_u64(&j, "corrupted", r->corrupted);
                json_u64(&j, "lost", r->sent - r->echoed - r->corrupted);
                json_double(&j, "loss_percent", loss);
                json_double(&j, "seconds", usec_to_sec(r->elapsed_usec));
                report_json_rtt(&j, "rtt_ms", &r->rtt, NULL);
                if (o->connect_per_probe)
                        report_json_rtt(&j, "connect_ms", &r->connect, NULL);
                json_object_close(&j);
                report_json_finish(&j, s);
                return status;
        }

        report_target_name(s, name, sizeof(name));
        if (o->output == OUTPUT_NAGIOS) {
                snprintf(text, sizeof(text), "%s: %llu/%llu echoed, %.1f%% loss, %llu corrupted, rtt avg %.3f ms", name,
                         (unsigned long long) r->echoed, (unsigned long long) r->sent, isfinite(loss) ? loss : 100.0,
                         (unsigned long long) r->corrupted, isfinite(rtt_avg(&r->rtt)) ? rtt_avg(&r->rtt) : 0.0);
                if (r->rtt.n == 0)
                        snprintf(text, sizeof(text), "%s: no echo, %llu sent", name, (unsigned long long) r->sent);
                return report_nagios(s, text, rtt_avg(&r->rtt), loss, r->corrupted, status);
        }

        if (s->error[0])
                report_error("%s", s->error);
        if (r->sent == 0 && status == EXIT_ERROR)
                return status;
        printf("\n--- %s echo statistics ---\n", name);
        printf("%llu sent, %llu echoed, %g%% loss, %llu corrupted, time %.0f ms\n", (unsigned long long) r->sent,
               (unsigned long long) r->echoed, isfinite(loss) ? loss : 0.0, (unsigned long long) r->corrupted,
               (double) r->elapsed_usec / 1000.0);
        if (r->rtt.n > 0)
                printf("rtt min/avg/max/mdev = %.3f/%.3f/%.3f/%.3f ms\n", rtt_min(&r->rtt), rtt_avg(&r->rtt),
                       rtt_max(&r->rtt), rtt_mdev(&r->rtt));
        if (r->connect.n > 0)
                printf("connect min/avg/max/mdev = %.3f/%.3f/%.3f/%.3f ms\n", rtt_min(&r->connect),
                       rtt_avg(&r->connect), rtt_max(&r->connect), rtt_mdev(&r->connect));
        fflush(stdout);
        return status;
}

/* ---- load ---- */

static double ns_to_ms(uint64_t ns) {
        return (double) ns / 1e6;
}

void report_load_progress(const Session *s, const LoadResult *r, const LoadInterval *last) {
        double secs = last->end - last->start;

        if (secs <= 0)
                return;
        fprintf(stderr, "\r\033[K[%4.0fs] %llu ok, %llu failed; now %.0f conn/s, %.0f round trips/s, %.2f MB/s echoed",
                last->end, (unsigned long long) r->ok, (unsigned long long) (r->refused + r->failed + r->timeouts),
                (double) last->ok / secs, (double) last->round_trips / secs, (double) last->bytes / secs / 1e6);
        fflush(stderr);
}

static const char *load_error_text(int e) {
        switch (e) {
        case ENODATA:
                return "server closed before echoing everything";
        case EBADMSG:
                return "server sent bytes it was never sent";
        case ECONNABORTED:
                return "reset before any echo (refused after accept)";
        default:
                return strerror(e);
        }
}

static double load_loss(const LoadResult *r) {
        uint64_t bad = r->refused + r->failed + r->timeouts, all = bad + r->ok;

        return all > 0 ? (double) bad * 100.0 / (double) all : NAN;
}

int report_load_end(const Session *s, const LoadResult *r, int status) {
        const Options *o = s->opts;
        double secs = usec_to_sec(r->elapsed_usec);
        double rate = secs > 0 ? (double) r->ok / secs : NAN;
        double bps = secs > 0 ? (double) r->bytes_echoed * 8 / secs : NAN;
        const Histogram *h = &r->latency;
        double p50 = report_percentile_ms(h, 50);
        double p90 = report_percentile_ms(h, 90);
        double p99 = report_percentile_ms(h, 99);
        double max = h->count ? ns_to_ms(h->max) : NAN;
        double avg = h->count ? h->sum / (double) h->count / 1e6 : NAN;
        char name[320], text[512];

        if (o->output == OUTPUT_JSON) {
                JsonWriter j;

                report_json_start(&j, s);
                json_array_open(&j, "intervals");
                for (size_t i = 0; i < r->n_intervals; i++) {
                        const LoadInterval *iv = r->intervals + i;
                        double d = iv->end - iv->start;

                        json_object_open(&j, NULL);
                        json_double(&j, "start", iv->start);
                        json_double(&j, "end", iv->end);
                        json_double(&j, "seconds", d);
                        json_u64(&j, "connections_ok", iv->ok);
                        json_u64(&j, "connections_failed", iv->failed);
                        json_u64(&j, "round_trips", iv->round_trips);
                        json_u64(&j, "bytes", iv->bytes);
                        json_double(&j, "bits_per_second", d > 0 ? (double) iv->bytes * 8 / d : NAN);
                        json_object_close(&j);
                }
                json_array_close(&j);
                json_object_open(&j, "end");
                json_object_open(&j, "connections");
                json_u64(&j, "ok", r->ok);
                json_u64(&j, "refused", r->refused);
                json_u64(&j, "failed", r->failed);
                json_u64(&j, "timeouts", r->timeouts);
                json_u64(&j, "unfinished", r->unfinished);
                json_double(&j, "per_second", rate);
                json_object_open(&j, "errors");
                for (int e = 1; e < LOAD_ERRNO_MAX; e++)
                        if (r->errors[e] > 0)
                                json_u64(&j, load_error_text(e), r->errors[e]);
                json_object_close(&j);
                json_object_close(&j);
                json_u64(&j, "round_trips", r->round_trips);
                json_u64(&j, "mismatches", r->mismatches);
                json_u64(&j, "bytes_sent", r->bytes_sent);
                json_u64(&j, "bytes_echoed", r->bytes_echoed);
                json_double(&j, "seconds", secs);
                json_double(&j, "bits_per_second", bps);
                json_object_open(&j, "latency_ms");
                json_double(&j, "min", h->count ? ns_to_ms(h->min) : NAN);
                json_double(&j, "avg", avg);
                json_double(&j, "p50", p50);
                json_double(&j, "p90", p90);
                json_double(&j, "p99", p99);
                json_double(&j, "max", max);
                json_object_close(&j);
                json_object_close(&j);
                report_json_finish(&j, s);
                return status;
        }

        report_target_name(s, name, sizeof(name));
        if (o->output == OUTPUT_NAGIOS) {
                snprintf(text, sizeof(text), "%s: %llu connections ok, %.1f%% failed, %llu mismatches, p99 %.3f ms",
                         name, (unsigned long long) r->ok, isfinite(load_loss(r)) ? load_loss(r) : 100.0,
                         (unsigned long long) r->mismatches, isfinite(p99) ? p99 : 0.0);
                return report_nagios(s, text, p99, load_loss(r), r->mismatches, status);
        }

        if (isatty(STDERR_FILENO))
                fputs("\r\033[K", stderr);
        if (s->error[0])
                report_error("%s", s->error);
        printf("--- %s echo load statistics ---\n", name);
        printf("connections: %llu ok, %llu refused, %llu failed, %llu timed out, %llu unfinished; %.1f/s\n",
               (unsigned long long) r->ok, (unsigned long long) r->refused, (unsigned long long) r->failed,
               (unsigned long long) r->timeouts, (unsigned long long) r->unfinished, isfinite(rate) ? rate : 0.0);
        printf("round trips: %llu, bytes: %llu sent, %llu echoed, %.2f MB/s echoed, time %.3f s\n",
               (unsigned long long) r->round_trips, (unsigned long long) r->bytes_sent,
               (unsigned long long) r->bytes_echoed, secs > 0 ? (double) r->bytes_echoed / secs / 1e6 : 0.0, secs);
        for (int e = 1; e < LOAD_ERRNO_MAX; e++)
                if (r->errors[e] > 0)
                        printf("failures: %llu x %s\n", (unsigned long long) r->errors[e], load_error_text(e));
        if (h->count > 0)
                printf("latency p50/p90/p99/max = %.3f/%.3f/%.3f/%.3f ms\n", p50, p90, p99, max);
        printf("mismatches: %llu\n", (unsigned long long) r->mismatches);
        fflush(stdout);
        return status;
}

int report_failure(const Session *s, int status) {
        const Options *o = s->opts;

        if (o->output == OUTPUT_JSON) {
                JsonWriter j;

                report_json_start(&j, s);
                json_array_open(&j, "intervals");
                json_array_close(&j);
                json_object_open(&j, "end");
                json_object_close(&j);
                report_json_finish(&j, s);
                return status;
        }
        if (o->output == OUTPUT_NAGIOS) {
                printf("ECHO %s - %s\n", status == EXIT_ERROR ? "CRITICAL" : "UNKNOWN", s->error);
                return status == EXIT_ERROR ? NAGIOS_CRITICAL : NAGIOS_UNKNOWN;
        }
        report_error("%s", s->error);
        return status;
}
