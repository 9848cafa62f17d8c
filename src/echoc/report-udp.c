/* echoc's UDP reports (ping and load): the summary as text, JSON (the TCP reports' shape: "start",
 * "intervals", "end", "error") and a Nagios line; the per-probe lines are report.c's. */
#include "echoc/report.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

#include "shared/json.h"

void report_udp_datagram(const Session *s, size_t len, const char *what) {
        char buf[IPADDR_STR_MAX];

        if (s->opts->output != OUTPUT_TEXT || s->opts->quiet)
                return;
        printf("%zu bytes from %s: %s\n", len, ipaddr_format_endpoint(&s->remote, buf), what);
        fflush(stdout);
}

void report_udp_progress(const Session *s, const UdpResult *r, const UdpInterval *last) {
        double secs = last->end - last->start;

        if (secs <= 0)
                return;
        fprintf(stderr, "\r\033[K[%4.0fs] %llu sent, %llu received; now %.0f/s sent, %.0f/s received", last->end,
                (unsigned long long) r->st.sent, (unsigned long long) r->st.received, (double) last->sent / secs,
                (double) last->received / secs);
        fflush(stderr);
}

static double per_second(uint64_t n, double secs) {
        return secs > 0 ? (double) n / secs : NAN;
}

static double udp_loss(const UdpStats *st) {
        return st->sent > 0 ? (double) st->lost * 100.0 / (double) st->sent : NAN;
}

static void json_udp_intervals(JsonWriter *j, const Session *s, const UdpResult *r) {
        json_array_open(j, "intervals");
        for (size_t i = 0; i < r->n_probes; i++)
                report_json_probe(j, s, r->probes + i);
        for (size_t i = 0; i < r->n_intervals; i++) {
                const UdpInterval *iv = r->intervals + i;
                double d = iv->end - iv->start;

                json_object_open(j, NULL);
                json_double(j, "start", iv->start);
                json_double(j, "end", iv->end);
                json_double(j, "seconds", d);
                json_u64(j, "sent", iv->sent);
                json_u64(j, "received", iv->received);
                json_double(j, "sent_per_second", per_second(iv->sent, d));
                json_double(j, "received_per_second", per_second(iv->received, d));
                json_object_close(j);
        }
        json_array_close(j);
}

static void json_udp_end(JsonWriter *j, const Session *s, const UdpResult *r) {
        const UdpStats *st = &r->st;
        double secs = (double) r->elapsed_usec / 1e6;

        json_object_open(j, "end");
        json_u64(j, "sent", st->sent);
        json_u64(j, "received", st->received);
        json_u64(j, "lost", st->lost);
        json_double(j, "loss_percent", udp_loss(st));
        json_u64(j, "duplicates", st->duplicates);
        json_u64(j, "reordered", st->reordered);
        json_u64(j, "corrupted", st->corrupted);
        json_u64(j, "stray", st->stray);
        json_u64(j, "refused", st->refused);
        json_u64(j, "late", st->late);
        json_double(j, "seconds", secs);
        if (s->opts->mode == MODE_LOAD) {
                json_double(j, "sent_per_second", per_second(st->sent, secs));
                json_double(j, "received_per_second", per_second(st->received, secs));
                json_double(j, "bits_per_second", per_second(st->received * s->opts->size * 8, secs));
        }
        report_json_rtt(j, "rtt_ms", &st->rtt, &st->latency);
        json_object_close(j);
}

int report_udp_end(const Session *s, const UdpResult *r, int status) {
        const Options *o = s->opts;
        const UdpStats *st = &r->st;
        double loss = udp_loss(st), secs = (double) r->elapsed_usec / 1e6;
        double p50 = report_percentile_ms(&st->latency, 50), p99 = report_percentile_ms(&st->latency, 99);
        char name[320], text[512];

        if (o->output == OUTPUT_JSON) {
                JsonWriter j;

                report_json_start(&j, s);
                json_udp_intervals(&j, s, r);
                json_udp_end(&j, s, r);
                report_json_finish(&j, s);
                return status;
        }

        report_target_name(s, name, sizeof(name));
        if (o->output == OUTPUT_NAGIOS) {
                /* ping judges the average round trip, load the 99th percentile (as over TCP) */
                double rtt = o->mode == MODE_LOAD ? p99 : rtt_avg(&st->rtt);

                if (st->received == 0)
                        snprintf(text, sizeof(text), "%s/udp: no echo, %llu sent", name, (unsigned long long) st->sent);
                else
                        snprintf(text, sizeof(text),
                                 "%s/udp: %llu/%llu received, %.1f%% loss, %llu duplicates, %llu corrupted, rtt %s "
                                 "%.3f ms",
                                 name, (unsigned long long) st->received, (unsigned long long) st->sent,
                                 isfinite(loss) ? loss : 100.0, (unsigned long long) st->duplicates,
                                 (unsigned long long) st->corrupted, o->mode == MODE_LOAD ? "p99" : "avg", rtt);
                return report_nagios(s, text, rtt, loss, st->corrupted, status);
        }

        if (o->mode == MODE_LOAD && isatty(STDERR_FILENO))
                fputs("\r\033[K", stderr);
        if (s->error[0])
                report_error("%s", s->error);
        if (st->sent == 0 && status == EXIT_ERROR)
                return status;
        if (o->mode == MODE_LOAD) {
                printf("--- %s udp echo load statistics ---\n", name);
                printf("datagrams: %llu sent, %llu received, %llu lost (%g%%), %llu duplicates, %llu reordered, "
                       "%llu corrupted, %llu stray, %llu refused\n",
                       (unsigned long long) st->sent, (unsigned long long) st->received, (unsigned long long) st->lost,
                       isfinite(loss) ? loss : 0.0, (unsigned long long) st->duplicates,
                       (unsigned long long) st->reordered, (unsigned long long) st->corrupted,
                       (unsigned long long) st->stray, (unsigned long long) st->refused);
                printf("rate: %.1f/s sent, %.1f/s received, %.2f Mbit/s echoed, time %.3f s\n",
                       secs > 0 ? per_second(st->sent, secs) : 0.0, secs > 0 ? per_second(st->received, secs) : 0.0,
                       secs > 0 ? per_second(st->received * o->size * 8, secs) / 1e6 : 0.0, secs);
                if (st->received > 0)
                        printf("rtt p50/p90/p99/max = %.3f/%.3f/%.3f/%.3f ms\n", p50,
                               report_percentile_ms(&st->latency, 90), p99, rtt_max(&st->rtt));
        } else {
                printf("\n--- %s udp echo statistics ---\n", name);
                printf("%llu sent, %llu received, %g%% loss, %llu duplicates, %llu reordered, %llu corrupted, "
                       "%llu stray, %llu refused, time %.0f ms\n",
                       (unsigned long long) st->sent, (unsigned long long) st->received, isfinite(loss) ? loss : 0.0,
                       (unsigned long long) st->duplicates, (unsigned long long) st->reordered,
                       (unsigned long long) st->corrupted, (unsigned long long) st->stray,
                       (unsigned long long) st->refused, secs * 1000.0);
                if (st->received > 0) {
                        printf("rtt min/avg/max/mdev = %.3f/%.3f/%.3f/%.3f ms\n", rtt_min(&st->rtt), rtt_avg(&st->rtt),
                               rtt_max(&st->rtt), rtt_mdev(&st->rtt));
                        printf("rtt p50/p99 = %.3f/%.3f ms\n", p50, p99);
                }
        }
        fflush(stdout);
        return status;
}
