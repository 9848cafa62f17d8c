/* UDP ping mode: a probe datagram every -i on one connected socket, each reply checked byte by
 * byte and classified by the ledger (udp.c); ping(8)-style lines (DUP!, reordered, late,
 * CORRUPTED, stray, timeouts, ICMP port unreachable) and a summary.
 *
 * Probes do not wait for each other (except with -i 0: the next goes when the last is settled): a
 * probe is outstanding until its first reply, an ICMP error attributed to it, or -W. Sending ends
 * at -c, -w or the first interrupt; then the outstanding probes get up to -W (a second interrupt
 * or -w ends that wait too). */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "echoc/echoc.h"
#include "echoc/report.h"
#include "echoc/udp.h"
#include "shared/macro.h"
#include "shared/mem.h"
#include "shared/timeutil.h"

typedef struct UdpPing {
        Session *s;
        const Options *o;
        int fd;
        UdpLedger ledger;
        UdpResult res;
        uint8_t *sbuf, *rbuf;
} UdpPing;

static int probe_append(UdpPing *p) {
        UdpResult *r = &p->res;

        if (mem_grow(&r->probes, &r->n_allocated, r->n_probes + 1, sizeof(Probe)) < 0)
                return -ENOMEM;
        r->probes[r->n_probes] = (Probe) {
                .seq = r->n_probes,
                .status = PROBE_TIMEOUT, /* until something comes back */
                .bytes = p->o->size,
                .connect_ms = NAN,
                .rtt_ms = NAN,
        };
        r->n_probes++;
        return 0;
}

/* An ICMP error (port unreachable: ECONNREFUSED) answers the newest probe still outstanding. */
static void on_icmp_error(UdpPing *p, int err) {
        uint64_t seq;

        if (err == -ECONNREFUSED)
                p->ledger.st.refused++;
        if (!udp_ledger_newest_outstanding(&p->ledger, &seq))
                return;
        (void) udp_ledger_settle(&p->ledger, seq);
        Probe *pr = &p->res.probes[seq];
        pr->status = PROBE_FAILED;
        pr->error = err;
        report_ping_probe(p->s, pr);
}

/* Send the next probe. Returns 0, or -errno for a local error that ends the run. */
static int ping_send(UdpPing *p) {
        uint64_t now = udp_now_ns();
        uint8_t *bufs[1] = { p->sbuf };
        int err = 0;

        udp_ledger_build(&p->ledger, bufs, 1, now);
        for (int tries = 0;; tries++) {
                if (send(p->fd, p->sbuf, p->o->size, 0) >= 0)
                        break;
                err = negative_errno();
                if (err == -EINTR)
                        continue;
                /* an error pending from an earlier probe's ICMP: that probe's answer */
                if (udp_icmp_error(err) && tries < 4) {
                        on_icmp_error(p, err);
                        continue;
                }
                if (err != -EAGAIN && err != -ENOBUFS)
                        return err;
                break; /* dropped locally: a probe that failed */
        }
        if (probe_append(p) < 0 || udp_ledger_sent(&p->ledger, 1, now) < 0)
                return -ENOMEM;
        if (err < 0) {
                (void) udp_ledger_settle(&p->ledger, p->ledger.next - 1);
                Probe *pr = &p->res.probes[p->ledger.next - 1];
                pr->status = PROBE_FAILED;
                pr->error = err;
                report_ping_probe(p->s, pr);
        }
        return 0;
}

static void on_reply(UdpPing *p, size_t len) {
        UdpReply rep;
        char what[96];

        udp_ledger_reply(&p->ledger, p->rbuf, len, udp_now_ns(), &rep);
        if (rep.kind == UDP_REPLY_STRAY) {
                report_udp_datagram(p->s, len, "stray datagram, not a reply to this run");
                return;
        }
        if (!rep.seq_sent) {
                snprintf(what, sizeof(what), "CORRUPTED (sequence number %llu was never sent)",
                         (unsigned long long) rep.seq);
                report_udp_datagram(p->s, len, what);
                return;
        }

        Probe *pr = &p->res.probes[rep.seq];
        Probe line = *pr;
        line.bytes = len;
        line.rtt_ms = rep.rtt_ms;
        switch (rep.kind) {
        case UDP_REPLY_OK:
                pr->status = line.status = PROBE_OK;
                pr->rtt_ms = rep.rtt_ms;
                pr->reordered = line.reordered = rep.reordered;
                pr->late = line.late = rep.late;
                break;
        case UDP_REPLY_DUPLICATE:
                pr->duplicates++;
                line.status = PROBE_OK;
                line.duplicate = true;
                line.reordered = false;
                line.late = rep.late;
                break;
        default: /* UDP_REPLY_CORRUPT */
                if (pr->status != PROBE_OK) {
                        pr->status = PROBE_CORRUPT;
                        pr->rtt_ms = rep.rtt_ms;
                        pr->mismatch_offset = rep.mismatch_at;
                }
                line.status = PROBE_CORRUPT;
                line.mismatch_offset = rep.mismatch_at;
                break;
        }
        report_ping_probe(p->s, &line);
}

/* Take every datagram (and ICMP error) waiting. Returns 0 or a fatal -errno. */
static int ping_receive(UdpPing *p) {
        for (;;) {
                /* MSG_TRUNC: the real length, so a longer reply shows as such */
                ssize_t n = recv(p->fd, p->rbuf, p->o->size + 1, MSG_TRUNC);
                if (n < 0) {
                        int err = negative_errno();
                        if (err == -EAGAIN)
                                return 0;
                        if (err == -EINTR)
                                continue;
                        if (!udp_icmp_error(err))
                                return err;
                        on_icmp_error(p, err);
                        continue;
                }
                on_reply(p, (size_t) n);
        }
}

static void on_timeouts(UdpPing *p, uint64_t now_ns) {
        uint64_t seq;

        while (udp_ledger_expire(&p->ledger, now_ns, &seq))
                report_ping_probe(p->s, &p->res.probes[seq]);
}

static int ping_loop(UdpPing *p) {
        const Options *o = p->o;
        uint64_t start = now_usec(), next = start;
        uint64_t deadline = o->deadline_usec > 0 ? start + o->deadline_usec : 0;
        bool sending = true;
        int r;

        for (;;) {
                uint64_t now = now_usec();
                bool past_deadline = deadline > 0 && now >= deadline;

                on_timeouts(p, now * 1000u);
                if (sending && ((o->count > 0 && p->ledger.next >= o->count) || echoc_interrupted || past_deadline))
                        sending = false;
                if (!sending && (p->ledger.outstanding == 0 || echoc_interrupted > 1 || past_deadline))
                        break;
                /* -i 0: as fast as the replies come (flood ping), never ahead of them */
                bool may_send = sending && (o->interval_usec > 0 || p->ledger.outstanding == 0);
                if (may_send && now >= next) {
                        r = ping_send(p);
                        if (r < 0)
                                return r;
                        next = MAX(next + o->interval_usec, now);
                        continue;
                }
                uint64_t wake = deadline, expiry = udp_ledger_next_expiry(&p->ledger);
                if (may_send)
                        wake = wake > 0 ? MIN(wake, next) : next;
                if (expiry > 0)
                        wake = wake > 0 ? MIN(wake, expiry / 1000u + 1) : expiry / 1000u + 1;
                r = net_wait(p->fd, POLLIN, wake);
                if (r < 0 && r != -EINTR)
                        return r;
                if (r > 0) {
                        r = ping_receive(p);
                        if (r < 0)
                                return r;
                }
        }
        p->res.elapsed_usec = now_usec() - start;
        return 0;
}

int udp_ping_run(Session *s) {
        const Options *o = s->opts;
        _cleanup_(closep) int fd = -1;
        _cleanup_(freep) uint8_t *sbuf = NULL, *rbuf = NULL;
        UdpPing p = { .s = s, .o = o };
        int status, r;

        fd = session_connect(s);
        if (fd < 0)
                return report_failure(s, EXIT_ERROR);
        sbuf = malloc(o->size);
        rbuf = malloc(o->size + 1);
        if (!sbuf || !rbuf || udp_ledger_init(&p.ledger, o->size, o->timeout_usec, udp_now_ns()) < 0) {
                snprintf(s->error, sizeof(s->error), "out of memory");
                return report_failure(s, EXIT_ERROR);
        }
        p.fd = fd;
        p.sbuf = sbuf;
        p.rbuf = rbuf;

        report_ping_start(s);
        r = ping_loop(&p);
        udp_ledger_finish(&p.ledger);
        p.res.st = p.ledger.st;

        status = report_udp_end(s, &p.res, udp_verdict(s, &p.res.st, r));
        udp_ledger_done(&p.ledger);
        free(p.res.probes);
        return status;
}
