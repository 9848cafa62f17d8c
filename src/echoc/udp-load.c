/* UDP load mode: datagrams as fast as --rate and --window allow for --duration on one connected
 * socket, batched with sendmmsg()/recvmmsg() (64 a call) so that the client is not what limits a
 * small host; every reply is checked byte by byte by the ledger (udp.c).
 *
 * The window counts datagrams outstanding: sent, not answered, not past -W. After the last send
 * the outstanding ones get up to -W; what has no reply by then is lost. Memory is allocated up
 * front except the ledger's bitmaps (2 bits a datagram) and its ring of send times (the
 * datagrams of one -W), which grow by doubling. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echoc/echoc.h"
#include "echoc/report.h"
#include "echoc/udp.h"
#include "shared/macro.h"
#include "shared/mem.h"
#include "shared/timeutil.h"

#define BATCH 64u
#define SOCKET_BUFFER (4 << 20) /* asked for; the kernel caps it at net.core.[rw]mem_max */

typedef struct UdpLoad {
        Session *s;
        const Options *o;
        int fd;
        UdpLedger ledger;
        UdpResult res;
        UdpInterval cur;
        uint64_t start_usec, cur_sent, cur_received;
        bool blocked; /* the last send met a full socket buffer: wait for POLLOUT */
        uint8_t *rbuf;
        uint8_t *sptr[BATCH];
        struct iovec siov[BATCH], riov[BATCH];
        struct mmsghdr smsg[BATCH], rmsg[BATCH];
} UdpLoad;

/* How many may be sent now: the window's room, the rate's allowance, one batch at most. */
static unsigned load_allowance(const UdpLoad *l, uint64_t now) {
        const Options *o = l->o;
        uint64_t n = o->window > l->ledger.outstanding ? o->window - l->ledger.outstanding : 0;

        if (o->rate > 0) {
                uint64_t allowed = (now - l->start_usec) * o->rate / USEC_PER_SEC + 1;
                n = MIN(n, allowed > l->ledger.st.sent ? allowed - l->ledger.st.sent : 0);
        }
        return (unsigned) MIN(n, (uint64_t) BATCH);
}

/* When the rate next allows a datagram (0: no rate). */
static uint64_t load_rate_due(const UdpLoad *l) {
        return l->o->rate > 0 ? l->start_usec + (l->ledger.st.sent * USEC_PER_SEC + l->o->rate - 1) / l->o->rate : 0;
}

/* Returns 0 or a fatal -errno. */
static int load_send(UdpLoad *l, unsigned count) {
        uint64_t now = udp_now_ns();
        int n;

        udp_ledger_build(&l->ledger, l->sptr, count, now);
        do
                n = sendmmsg(l->fd, l->smsg, count, 0);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
                int err = negative_errno();
                if (err == -EAGAIN || err == -ENOBUFS) {
                        l->blocked = true;
                        return 0;
                }
                if (udp_icmp_error(err)) {
                        /* an earlier datagram's ICMP error; this batch was not sent */
                        l->ledger.st.refused += err == -ECONNREFUSED;
                        return 0;
                }
                return err;
        }
        l->cur.sent += (unsigned) n;
        return udp_ledger_sent(&l->ledger, (unsigned) n, now);
}

/* Take what has arrived. Returns how many datagrams, or a fatal -errno. */
static int load_receive(UdpLoad *l) {
        int total = 0;

        for (;;) {
                int n = recvmmsg(l->fd, l->rmsg, BATCH, MSG_DONTWAIT, NULL);
                if (n < 0) {
                        int err = negative_errno();
                        if (err == -EAGAIN)
                                return total;
                        if (err == -EINTR)
                                continue;
                        if (!udp_icmp_error(err))
                                return err;
                        l->ledger.st.refused += err == -ECONNREFUSED;
                        continue;
                }
                uint64_t now = udp_now_ns(), before = l->ledger.st.received;
                for (int i = 0; i < n; i++) {
                        UdpReply rep;
                        udp_ledger_reply(&l->ledger, l->rbuf + (size_t) i * (l->o->size + 1), l->rmsg[i].msg_len, now,
                                         &rep);
                }
                l->cur.received += l->ledger.st.received - before;
                total += n;
                if ((unsigned) n < BATCH)
                        return total;
        }
}

static void load_tick(UdpLoad *l, uint64_t now, bool progress) {
        UdpResult *r = &l->res;

        l->cur.end = (double) (now - l->start_usec) / 1e6;
        if (mem_grow(&r->intervals, &r->n_allocated_intervals, r->n_intervals + 1, sizeof(UdpInterval)) < 0)
                return;
        r->intervals[r->n_intervals++] = l->cur;
        if (progress) {
                r->st = l->ledger.st;
                report_udp_progress(l->s, r, &l->cur);
        }
        l->cur = (UdpInterval) { .start = l->cur.end };
}

static int load_loop(UdpLoad *l) {
        const Options *o = l->o;
        bool tty = isatty(STDERR_FILENO) && o->output == OUTPUT_TEXT;
        uint64_t end = l->start_usec + o->duration_usec, send_end = 0;
        uint64_t next_tick = l->start_usec + USEC_PER_SEC;
        int r;

        for (;;) {
                uint64_t now = now_usec(), seq;

                if (send_end == 0 && (now >= end || echoc_interrupted)) {
                        send_end = now;
                        l->res.elapsed_usec = now - l->start_usec;
                        load_tick(l, now, false);
                }
                if (send_end > 0 &&
                    (l->ledger.outstanding == 0 || now >= send_end + o->timeout_usec || echoc_interrupted > 1))
                        return 0;
                while (udp_ledger_expire(&l->ledger, now * 1000u, &seq))
                        ;

                unsigned k = send_end == 0 && !l->blocked ? load_allowance(l, now) : 0;
                if (k > 0) {
                        r = load_send(l, k);
                        if (r < 0)
                                return r;
                }
                r = load_receive(l);
                if (r < 0)
                        return r;

                if (send_end == 0 && now >= next_tick) {
                        load_tick(l, now, tty);
                        next_tick += USEC_PER_SEC;
                }
                if (r > 0 || (k > 0 && !l->blocked && load_allowance(l, now_usec()) > 0))
                        continue; /* busy: no need to sleep */

                /* nothing to do until a reply, room in the socket, the rate, an expiry or the end */
                uint64_t wake = send_end > 0 ? send_end + o->timeout_usec : MIN(end, next_tick);
                uint64_t expiry = udp_ledger_next_expiry(&l->ledger) / 1000u + 1, due = load_rate_due(l);
                if (expiry > 1)
                        wake = MIN(wake, expiry);
                if (send_end == 0 && due > 0 && !l->blocked)
                        wake = MIN(wake, due);
                r = net_wait(l->fd, POLLIN | (l->blocked ? POLLOUT : 0), wake);
                if (r < 0 && r != -EINTR)
                        return r;
                if (r > 0 && (r & (POLLOUT | POLLERR)))
                        l->blocked = false;
        }
}

int udp_load_run(Session *s) {
        const Options *o = s->opts;
        _cleanup_(closep) int fd = -1;
        _cleanup_(freep) uint8_t *sbuf = NULL, *rbuf = NULL;
        _cleanup_(freep) UdpLoad *l = NULL;
        int status, r, size = SOCKET_BUFFER;

        fd = session_connect(s);
        if (fd < 0)
                return report_failure(s, EXIT_ERROR);
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        (void) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));

        l = calloc(1, sizeof(*l));
        sbuf = malloc(BATCH * o->size);
        rbuf = malloc(BATCH * (o->size + 1)); /* one more byte: a longer reply shows */
        if (!l || !sbuf || !rbuf || udp_ledger_init(&l->ledger, o->size, o->timeout_usec, udp_now_ns()) < 0) {
                snprintf(s->error, sizeof(s->error), "out of memory");
                return report_failure(s, EXIT_ERROR);
        }
        l->s = s;
        l->o = o;
        l->fd = fd;
        for (unsigned i = 0; i < BATCH; i++) {
                l->sptr[i] = sbuf + (size_t) i * o->size;
                l->siov[i] = (struct iovec) { l->sptr[i], o->size };
                l->smsg[i].msg_hdr = (struct msghdr) { .msg_iov = &l->siov[i], .msg_iovlen = 1 };
                l->riov[i] = (struct iovec) { rbuf + (size_t) i * (o->size + 1), o->size + 1 };
                l->rmsg[i].msg_hdr = (struct msghdr) { .msg_iov = &l->riov[i], .msg_iovlen = 1 };
        }
        l->rbuf = rbuf;

        l->start_usec = now_usec();
        r = load_loop(l);
        if (l->res.elapsed_usec == 0)
                l->res.elapsed_usec = now_usec() - l->start_usec;
        udp_ledger_finish(&l->ledger);
        l->res.st = l->ledger.st;

        status = report_udp_end(s, &l->res, udp_verdict(s, &l->res.st, r));
        udp_ledger_done(&l->ledger);
        free(l->res.intervals);
        return status;
}
