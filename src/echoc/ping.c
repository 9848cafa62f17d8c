/* Ping mode: random probes, each verified byte by byte and timed; ping(8)-style lines and summary.
 *
 * On one connection (default) the probes form a single byte stream: every sent byte stays in
 * the ring until its echo arrives, so an echo that comes after its probe timed out is still
 * compared (and not counted as echoed). With --connect each probe opens, half-closes and reads
 * to EOF on its own connection, timing connect and echo separately (tcping-style). */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echoc/echoc.h"
#include "echoc/report.h"
#include "echoc/ring.h"
#include "shared/macro.h"
#include "shared/mem.h"
#include "shared/proxy.h"
#include "shared/timeutil.h"

#define INFLIGHT_MAX 64u
#define RECV_CHUNK (64u << 10)

typedef struct Inflight {
        uint64_t start, end; /* stream offsets */
        uint64_t sent_usec;
        uint64_t corrupt_at; /* offset within the probe, UINT64_MAX if intact */
        bool timed_out;
} Inflight;

typedef struct PingConn {
        int fd;
        ByteRing ring;
        uint8_t *rbuf;
        Inflight inflight[INFLIGHT_MAX];
        unsigned head, n_inflight;
        bool done;       /* the current probe's echo is complete */
        uint64_t done_usec;
        uint64_t done_corrupt;
        bool eof;
} PingConn;

static void ping_conn_reset(PingConn *c, int fd) {
        c->fd = fd;
        c->ring.verified = c->ring.sent = c->ring.filled = 0;
        c->head = c->n_inflight = 0;
        c->done = c->eof = false;
}

static Inflight *inflight_find(PingConn *c, uint64_t off) {
        for (unsigned i = 0; i < c->n_inflight; i++) {
                Inflight *f = &c->inflight[(c->head + i) % INFLIGHT_MAX];
                if (off >= f->start && off < f->end)
                        return f;
        }
        return NULL;
}

/* Compare what arrived; a differing byte marks its probe corrupted and is skipped, so the
 * stream stays aligned. Returns 0, or -EBADMSG when the server sent bytes it never got. */
static int ping_verify(PingConn *c, const uint8_t *data, size_t len) {
        while (len > 0) {
                size_t ok = ring_verify(&c->ring, data, len);

                data += ok;
                len -= ok;
                if (len > 0) {
                        if (c->ring.verified >= c->ring.sent)
                                return -EBADMSG;
                        Inflight *f = inflight_find(c, c->ring.verified);
                        if (f && f->corrupt_at == UINT64_MAX)
                                f->corrupt_at = c->ring.verified - f->start;
                        c->ring.verified++;
                        data++;
                        len--;
                }
                while (c->n_inflight > 0 && c->ring.verified >= c->inflight[c->head].end) {
                        Inflight *f = &c->inflight[c->head];
                        if (!f->timed_out) {
                                c->done = true;
                                c->done_usec = now_usec();
                                c->done_corrupt = f->corrupt_at;
                        }
                        c->head = (c->head + 1) % INFLIGHT_MAX;
                        c->n_inflight--;
                }
        }
        return 0;
}

/* Move bytes both ways until the current probe is echoed (returns 1), until (returns 0), or
 * an error: -ENODATA (server closed early), -EBADMSG (extra bytes), -EINTR, -errno. */
static int ping_pump(PingConn *c, uint64_t until, bool want_done) {
        for (;;) {
                if (want_done && c->done)
                        return 1;
                if (echoc_interrupted)
                        return -EINTR;

                struct pollfd p = { .fd = c->fd, .events = POLLIN };
                int timeout = -1;
                if (c->ring.filled > c->ring.sent)
                        p.events |= POLLOUT;
                if (until > 0) {
                        uint64_t now = now_usec();
                        if (now >= until)
                                return 0;
                        timeout = (int) MIN((until - now + 999) / 1000, (uint64_t) INT32_MAX);
                }
                int r = poll(&p, 1, timeout);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (p.revents & POLLOUT) {
                        const uint8_t *span;
                        size_t len = ring_send_span(&c->ring, &span);
                        ssize_t n = send(c->fd, span, len, MSG_NOSIGNAL);
                        if (n < 0 && errno != EAGAIN && errno != EINTR)
                                return negative_errno();
                        if (n > 0)
                                ring_sent(&c->ring, (size_t) n);
                }
                if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
                        ssize_t n = recv(c->fd, c->rbuf, RECV_CHUNK, 0);
                        if (n < 0) {
                                if (errno == EAGAIN || errno == EINTR)
                                        continue;
                                return negative_errno();
                        }
                        if (n == 0) {
                                c->eof = true;
                                return c->ring.verified < c->ring.filled ? -ENODATA : 0;
                        }
                        r = ping_verify(c, c->rbuf, (size_t) n);
                        if (r < 0)
                                return r;
                }
        }
}

/* Queue one random probe of size bytes. Returns 0 or -ENOBUFS (too much still unechoed). */
static int ping_queue(PingConn *c, size_t size, uint64_t now) {
        if (ring_room(&c->ring) < size || c->n_inflight == INFLIGHT_MAX)
                return -ENOBUFS;
        Inflight *f = &c->inflight[(c->head + c->n_inflight++) % INFLIGHT_MAX];
        *f = (Inflight) {
                .start = c->ring.filled,
                .end = c->ring.filled + size,
                .sent_usec = now,
                .corrupt_at = UINT64_MAX,
        };
        for (size_t left = size; left > 0;) {
                uint8_t *span;
                size_t n = MIN(left, ring_fill_span(&c->ring, &span));
                arc4random_buf(span, n);
                ring_filled(&c->ring, n);
                left -= n;
        }
        c->done = false;
        return 0;
}

static const char *ping_error_text(int r) {
        switch (r) {
        case -ENODATA:
                return "server closed the connection before echoing everything";
        case -EBADMSG:
                return "server sent bytes it was never sent";
        case -ENOBUFS:
                return "too many probes still unechoed";
        default:
                return strerror(-r);
        }
}

static int ping_record(Session *s, PingResult *res, const Probe *p) {
        report_ping_probe(s, p);
        switch (p->status) {
        case PROBE_OK:
                res->echoed++;
                rtt_add(&res->rtt, p->rtt_ms);
                break;
        case PROBE_CORRUPT:
                res->corrupted++;
                break;
        default:
                res->lost++;
        }
        if (isfinite(p->connect_ms))
                rtt_add(&res->connect, p->connect_ms);
        if (s->opts->output != OUTPUT_JSON)
                return 0;
        if (mem_grow(&res->probes, &res->n_allocated, res->n_probes + 1, sizeof(Probe)) < 0)
                return -ENOMEM;
        res->probes[res->n_probes++] = *p;
        return 0;
}

/* Wait for the current probe (sent at t0) to be echoed; fills p. Returns 0 or a fatal -errno. */
static int ping_await(PingConn *c, const Options *o, uint64_t t0, uint64_t deadline, Probe *p) {
        uint64_t until = o->timeout_usec > 0 ? t0 + o->timeout_usec : 0;
        if (deadline > 0 && (until == 0 || deadline < until))
                until = deadline;

        int r = ping_pump(c, until, true);
        if (r == 1) {
                p->rtt_ms = (double) (c->done_usec - t0) / 1000.0;
                p->status = c->done_corrupt == UINT64_MAX ? PROBE_OK : PROBE_CORRUPT;
                p->mismatch_offset = c->done_corrupt;
                return 0;
        }
        if (r == 0 || r == -EINTR) {
                /* the echo may still come; it will be compared, not counted */
                c->inflight[(c->head + c->n_inflight - 1) % INFLIGHT_MAX].timed_out = true;
                p->status = PROBE_TIMEOUT;
                return r;
        }
        p->status = PROBE_FAILED;
        p->error = r;
        return r;
}

/* Half-close and read to EOF (bounded), so the server sees a clean end rather than a reset. */
static void ping_close(PingConn *c, uint64_t timeout_usec) {
        uint64_t until = now_usec() + MIN(timeout_usec > 0 ? timeout_usec : USEC_PER_SEC, USEC_PER_SEC);

        if (c->fd < 0)
                return;
        if (!c->eof && shutdown(c->fd, SHUT_WR) == 0)
                while (!c->eof && ping_pump(c, until, false) >= 0 && now_usec() < until)
                        ;
        c->fd = safe_close(c->fd);
}

static void ring_donep(ByteRing *r) {
        ring_done(r);
}

int ping_run(Session *s) {
        const Options *o = s->opts;
        _cleanup_(ring_donep) ByteRing ring = { 0 };
        _cleanup_(freep) uint8_t *rbuf = NULL;
        _cleanup_(freep) PingConn *c = NULL;
        PingResult res = { 0 };
        uint8_t header[PROXY_HEADER_MAX];
        uint64_t start, deadline, next;
        char ebuf[IPADDR_STR_MAX];
        bool ever_connected = false;
        int status = EXIT_INTACT, r = 0;

        if (ring_init(&ring, MAX((size_t) 4 << 20, 4 * o->size)) < 0 || !(rbuf = malloc(RECV_CHUNK)) ||
            !(c = calloc(1, sizeof(*c)))) {
                snprintf(s->error, sizeof(s->error), "out of memory");
                return report_failure(s, EXIT_ERROR);
        }
        c->ring = ring;
        c->rbuf = rbuf;
        c->fd = -1;

        if (!o->connect_per_probe) {
                int fd = session_connect(s);
                if (fd < 0)
                        return report_failure(s, EXIT_ERROR);
                ping_conn_reset(c, fd);
                ever_connected = true;
                r = session_proxy_header(s, fd, header, sizeof(header));
                if (r > 0)
                        r = net_send_all(fd, header, (size_t) r, o->timeout_usec);
                if (r < 0) {
                        snprintf(s->error, sizeof(s->error), "cannot send the PROXY header: %s", strerror(-r));
                        safe_close(fd);
                        return report_failure(s, EXIT_ERROR);
                }
        } else
                s->remote = s->target.addrs[0];

        report_ping_start(s);
        start = next = now_usec();
        deadline = o->deadline_usec > 0 ? start + o->deadline_usec : 0;

        for (uint64_t seq = 0; o->count == 0 || seq < o->count; seq++) {
                Probe p = { .seq = seq, .bytes = o->size, .connect_ms = NAN, .rtt_ms = NAN };
                uint64_t t0;

                /* wait for the send time, still taking in late echoes */
                if (!o->connect_per_probe) {
                        r = ping_pump(c, next, false);
                        if (r >= 0 && c->eof)
                                r = -ENODATA;
                        if (r < 0 && r != -EINTR) {
                                snprintf(s->error, sizeof(s->error), "%s after %llu probes",
                                         r == -ENODATA ? "server closed the connection" : ping_error_text(r),
                                         (unsigned long long) seq);
                                status = EXIT_MISMATCH;
                                break;
                        }
                } else
                        while (!echoc_interrupted && now_usec() < next)
                                (void) poll(NULL, 0, (int) ((next - now_usec() + 999) / 1000));
                if (echoc_interrupted || (deadline > 0 && now_usec() >= deadline))
                        break;

                t0 = now_usec();
                if (o->connect_per_probe) {
                        int fd = -1;
                        for (size_t i = 0; i < s->target.n_addrs; i++) {
                                fd = net_connect(&s->target.addrs[i], o->timeout_usec);
                                s->remote = s->target.addrs[i];
                                if (fd >= 0 || fd == -EINTR)
                                        break;
                        }
                        if (fd == -EINTR)
                                break;
                        p.connect_ms = (double) (now_usec() - t0) / 1000.0;
                        res.sent++;
                        if (fd < 0) {
                                p.status = PROBE_FAILED;
                                p.error = fd;
                                snprintf(s->error, sizeof(s->error), "connect to %s: %s",
                                         ipaddr_format_endpoint(&s->remote, ebuf), strerror(-fd));
                                if (ping_record(s, &res, &p) < 0)
                                        break;
                                next = MAX(t0 + o->interval_usec, now_usec());
                                continue;
                        }
                        ever_connected = true;
                        s->error[0] = 0;
                        ping_conn_reset(c, fd);
                        (void) net_endpoints(fd, &s->local, NULL);
                        s->connected = true;
                        r = session_proxy_header(s, fd, header, sizeof(header));
                        if (r > 0)
                                r = net_send_all(fd, header, (size_t) r, o->timeout_usec);
                        t0 = now_usec();
                } else
                        res.sent++;

                if (r >= 0)
                        r = ping_queue(c, o->size, t0);
                if (r >= 0) {
                        r = ping_await(c, o, t0, deadline, &p);
                        if (r == -EINTR) {
                                res.sent--; /* interrupted while waiting: not a loss */
                                break;
                        }
                } else {
                        p.status = PROBE_FAILED;
                        p.error = r;
                }
                if (o->connect_per_probe && r >= 0 && p.status != PROBE_TIMEOUT) {
                        /* the server must close after our half-close, with nothing extra */
                        uint64_t until = o->timeout_usec > 0 ? now_usec() + o->timeout_usec : 0;
                        if (shutdown(c->fd, SHUT_WR) < 0)
                                r = negative_errno();
                        while (r >= 0 && !c->eof) {
                                r = ping_pump(c, until, false);
                                if (r == 0 && !c->eof)
                                        r = -ETIMEDOUT;
                        }
                        if (r < 0 && r != -EINTR) {
                                p.status = PROBE_FAILED;
                                p.error = r;
                        }
                }
                if (ping_record(s, &res, &p) < 0)
                        break;
                if (o->connect_per_probe) {
                        ping_close(c, o->timeout_usec);
                        r = 0;
                } else if (r < 0 && r != -EINTR) {
                        snprintf(s->error, sizeof(s->error), "%s after %llu probes", ping_error_text(r),
                                 (unsigned long long) seq + 1);
                        status = EXIT_MISMATCH;
                        break;
                }
                next = MAX(t0 + o->interval_usec, now_usec());
        }

        res.elapsed_usec = now_usec() - start;
        ping_close(c, o->timeout_usec);

        if (status == EXIT_INTACT && (res.sent == 0 || res.echoed < res.sent))
                status = EXIT_MISMATCH;
        if (o->connect_per_probe && !ever_connected && res.sent > 0)
                status = EXIT_ERROR;
        else if (o->connect_per_probe)
                s->error[0] = 0; /* per-probe errors are in the lines and the loss figure */
        r = report_ping_end(s, &res, status);
        free(res.probes);
        return r;
}
