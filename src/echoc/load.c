/* Load mode: many connections from one epoll thread, for a bounded duration.
 *
 * Each slot runs connect → send a payload (after an optional PROXY header) → read and compare
 * the echo. Without --persistent a round is one connection (send, half-close, echo, EOF); with
 * it a connection does rounds back to back until the end. All memory (slots, the payload
 * pattern, the latency histogram) is allocated up front: nothing is allocated per probe. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "echoc/echoc.h"
#include "echoc/report.h"
#include "shared/macro.h"
#include "shared/mem.h"
#include "shared/proxy.h"
#include "shared/timeutil.h"

#define PATTERN_SPREAD 4096u
#define RECV_CHUNK (64u << 10)
#define EVENTS_MAX 256
#define END_GRACE_USEC (2 * USEC_PER_SEC)

typedef enum SlotState {
        SLOT_FREE,
        SLOT_CONNECTING,
        SLOT_ACTIVE,   /* a round in flight */
        SLOT_DRAINING, /* half-closed, reading to EOF */
} SlotState;

typedef struct Slot {
        int fd;
        SlotState state;
        bool corrupt;
        uint16_t hdr_len, hdr_sent;
        uint32_t sent, recvd, pat;
        uint64_t rounds;
        uint64_t round_ns, activity_usec;
        uint8_t hdr[PROXY_HEADER_MAX];
} Slot;

typedef struct Load {
        Session *s;
        const Options *o;
        int ep;
        Slot *slots;
        unsigned *free_slots, n_free, n_busy;
        uint8_t *pattern, *rbuf;
        uint64_t started, start_usec;
        bool stopping;
        LoadResult res;
        LoadInterval cur;
} Load;

static uint64_t now_nsec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static void slot_close(Load *l, unsigned i) {
        Slot *c = &l->slots[i];

        c->fd = safe_close(c->fd);
        c->state = SLOT_FREE;
        l->free_slots[l->n_free++] = i;
        l->n_busy--;
}

static void slot_fail(Load *l, unsigned i, int err) {
        const Slot *c = &l->slots[i];

        /* a server that admits after accept (echod) refuses by closing at once: a reset
         * before the first echoed byte is a refusal, not a broken echo (ENOTCONN: the reset
         * came first and our shutdown(SHUT_WR) found the connection gone) */
        if ((err == -ECONNRESET || err == -ENOTCONN) && c->rounds == 0 && c->recvd == 0)
                err = -ECONNABORTED;
        l->res.errors[-err > 0 && -err < LOAD_ERRNO_MAX ? -err : EIO]++;
        if (err == -ECONNREFUSED || err == -ECONNABORTED)
                l->res.refused++;
        else if (err == -ETIMEDOUT)
                l->res.timeouts++;
        else
                l->res.failed++;
        l->cur.failed++;
        slot_close(l, i);
}

static int slot_events(Load *l, unsigned i, uint32_t events) {
        struct epoll_event ev = { .events = events, .data.u32 = i };

        return epoll_ctl(l->ep, EPOLL_CTL_MOD, l->slots[i].fd, &ev) < 0 ? negative_errno() : 0;
}

static void round_begin(Load *l, unsigned i) {
        Slot *c = &l->slots[i];

        c->sent = c->recvd = 0;
        c->corrupt = false;
        c->pat = (uint32_t) ((i * 131u + c->rounds * 1021u) % PATTERN_SPREAD);
        c->round_ns = now_nsec();
}

/* Send what is left of the header and payload; on completion half-close (one-shot) or wait for
 * the echo. Returns 0 or -errno. */
static int slot_send(Load *l, unsigned i) {
        Slot *c = &l->slots[i];
        size_t size = l->o->size;

        while (c->hdr_sent < c->hdr_len || c->sent < size) {
                struct iovec iov[2] = {
                        { c->hdr + c->hdr_sent, (size_t) (c->hdr_len - c->hdr_sent) },
                        { l->pattern + c->pat + c->sent, size - c->sent },
                };
                struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
                ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return slot_events(l, i, EPOLLIN | EPOLLOUT);
                        return negative_errno();
                }
                size_t h = MIN((size_t) n, iov[0].iov_len);
                c->hdr_sent += (uint16_t) h;
                c->sent += (uint32_t) ((size_t) n - h);
                l->res.bytes_sent += (size_t) n - h;
        }
        if (!l->o->persistent && shutdown(c->fd, SHUT_WR) < 0)
                return negative_errno();
        return slot_events(l, i, EPOLLIN);
}

static int slot_connected(Load *l, unsigned i) {
        Slot *c = &l->slots[i];
        int r = net_connect_result(c->fd);

        if (r < 0)
                return r;
        c->state = SLOT_ACTIVE;
        c->hdr_len = c->hdr_sent = 0;
        r = session_proxy_header(l->s, c->fd, c->hdr, sizeof(c->hdr));
        if (r < 0)
                return r;
        c->hdr_len = (uint16_t) r;
        round_begin(l, i);
        return slot_send(l, i);
}

/* One round's echo is complete. */
static void round_end(Load *l, unsigned i) {
        Slot *c = &l->slots[i];

        hist_add(&l->res.latency, now_nsec() - c->round_ns);
        l->res.round_trips++;
        l->cur.round_trips++;
        if (c->corrupt)
                l->res.mismatches++;
        c->rounds++;
}

static int slot_readable(Load *l, unsigned i) {
        Slot *c = &l->slots[i];
        size_t size = l->o->size;

        for (;;) {
                ssize_t n = recv(c->fd, l->rbuf, RECV_CHUNK, 0);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return errno == EAGAIN ? 0 : negative_errno();
                }
                if (n == 0) {
                        if (c->state == SLOT_DRAINING || (c->state == SLOT_ACTIVE && c->recvd == size && !l->o->persistent)) {
                                l->res.ok++;
                                l->cur.ok++;
                                slot_close(l, i);
                                return 1;
                        }
                        return -ENODATA; /* closed before echoing everything */
                }
                size_t take = c->state == SLOT_ACTIVE ? MIN((size_t) n, size - c->recvd) : 0;
                if (take > 0) {
                        if (memcmp(l->rbuf, l->pattern + c->pat + c->recvd, take) != 0)
                                c->corrupt = true;
                        bool was_done = c->recvd == size;
                        c->recvd += (uint32_t) take;
                        l->res.bytes_echoed += take;
                        l->cur.bytes += take;
                        if (!was_done && c->recvd == size)
                                round_end(l, i);
                }
                if ((size_t) n > take) {
                        /* bytes the server was never sent: the stream is no longer aligned */
                        l->res.mismatches++;
                        return -EBADMSG;
                }
                if (c->state == SLOT_ACTIVE && c->recvd == size && l->o->persistent) {
                        if (l->stopping) {
                                if (shutdown(c->fd, SHUT_WR) < 0)
                                        return negative_errno();
                                c->state = SLOT_DRAINING;
                        } else {
                                round_begin(l, i);
                                int r = slot_send(l, i);
                                if (r < 0)
                                        return r;
                        }
                }
                if ((size_t) n < RECV_CHUNK)
                        return 0;
        }
}

static int slot_start(Load *l) {
        unsigned i = l->free_slots[--l->n_free];
        Slot *c = &l->slots[i];
        int fd = net_connect_start(&l->s->remote);

        l->n_busy++;
        l->started++;
        if (fd < 0) {
                c->fd = -1;
                slot_fail(l, i, fd);
                return fd;
        }
        struct epoll_event ev = { .events = EPOLLOUT, .data.u32 = i };
        if (epoll_ctl(l->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
                int r = negative_errno();
                c->fd = fd;
                slot_fail(l, i, r);
                return r;
        }
        *c = (Slot) { .fd = fd, .state = SLOT_CONNECTING, .activity_usec = now_usec() };
        return 0;
}

/* Start connections while slots are free and the rate allows; returns when the next one may
 * start (0 = no rate limit pending). */
static uint64_t load_fill(Load *l, uint64_t now) {
        while (!l->stopping && l->n_free > 0) {
                if (l->o->rate > 0) {
                        uint64_t due = l->start_usec + l->started * USEC_PER_SEC / l->o->rate;
                        if (due > now)
                                return due;
                }
                if (slot_start(l) < 0)
                        break; /* e.g. out of local ports: try again on the next turn */
        }
        return 0;
}

static void load_tick(Load *l, uint64_t now, bool tty) {
        l->cur.end = (double) (now - l->start_usec) / 1e6;
        if (mem_grow(&l->res.intervals, &l->res.n_allocated, l->res.n_intervals + 1, sizeof(LoadInterval)) < 0)
                return;
        l->res.intervals[l->res.n_intervals++] = l->cur;
        if (tty && l->o->output == OUTPUT_TEXT)
                report_load_progress(l->s, &l->res, &l->cur);
        l->cur = (LoadInterval) { .start = l->cur.end };
}

static void load_handle(Load *l, unsigned i, uint32_t events) {
        Slot *c = &l->slots[i];
        int r = 0;

        if (c->state == SLOT_FREE)
                return;
        c->activity_usec = now_usec();
        if (c->state == SLOT_CONNECTING)
                r = slot_connected(l, i);
        else {
                if (events & EPOLLOUT)
                        r = slot_send(l, i);
                if (r >= 0 && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                        r = slot_readable(l, i);
                if (r == 0 && (events & EPOLLERR) && !(events & EPOLLIN))
                        r = net_connect_result(c->fd) < 0 ? net_connect_result(c->fd) : -EIO;
        }
        if (r < 0)
                slot_fail(l, i, r);
}

static void load_expire(Load *l, uint64_t now) {
        uint64_t timeout = l->o->timeout_usec;

        if (timeout == 0)
                return;
        for (unsigned i = 0; i < l->o->connections; i++)
                if (l->slots[i].state != SLOT_FREE && now - l->slots[i].activity_usec > timeout)
                        slot_fail(l, i, -ETIMEDOUT);
}

static void load_stop(Load *l) {
        l->stopping = true;
        for (unsigned i = 0; i < l->o->connections; i++) {
                Slot *c = &l->slots[i];
                /* a persistent connection between rounds is half-closed at once */
                if (c->state == SLOT_ACTIVE && l->o->persistent && c->recvd == l->o->size) {
                        if (shutdown(c->fd, SHUT_WR) < 0)
                                slot_fail(l, i, negative_errno());
                        else
                                c->state = SLOT_DRAINING;
                }
        }
}

int load_run(Session *s) {
        const Options *o = s->opts;
        _cleanup_(closep) int ep = -1;
        _cleanup_(freep) Slot *slots = NULL;
        _cleanup_(freep) unsigned *free_slots = NULL;
        _cleanup_(freep) uint8_t *pattern = NULL, *rbuf = NULL;
        _cleanup_(freep) Load *l = NULL;
        struct epoll_event events[EVENTS_MAX];
        bool tty = isatty(STDERR_FILENO);
        int status;

        /* one connection first: a clear error if the service is not there at all */
        {
                _cleanup_(closep) int fd = session_connect(s);
                if (fd < 0)
                        return report_failure(s, EXIT_ERROR);
                if (shutdown(fd, SHUT_WR) == 0) {
                        char b[64];
                                uint64_t until = now_usec() + (o->timeout_usec > 0 ? MIN(o->timeout_usec, USEC_PER_SEC) : USEC_PER_SEC);
                        while (net_wait(fd, POLLIN, until) > 0 && recv(fd, b, sizeof(b), 0) > 0)
                                ;
                }
        }

        /* one fd per connection: raise the soft limit as far as the hard one allows */
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t) o->connections + 64) {
                rl.rlim_cur = MIN(rl.rlim_max, (rlim_t) o->connections + 64);
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }

        l = calloc(1, sizeof(*l));
        slots = calloc(o->connections, sizeof(Slot));
        free_slots = calloc(o->connections, sizeof(unsigned));
        pattern = malloc(o->size + PATTERN_SPREAD);
        rbuf = malloc(RECV_CHUNK);
        ep = epoll_create1(EPOLL_CLOEXEC);
        if (!l || !slots || !free_slots || !pattern || !rbuf || ep < 0) {
                snprintf(s->error, sizeof(s->error), "cannot set up: %s", ep < 0 ? strerror(errno) : "out of memory");
                return report_failure(s, EXIT_ERROR);
        }
        arc4random_buf(pattern, o->size + PATTERN_SPREAD);
        *l = (Load) {
                .s = s, .o = o, .ep = ep, .slots = slots, .free_slots = free_slots,
                .pattern = pattern, .rbuf = rbuf,
        };
        for (unsigned i = 0; i < o->connections; i++) {
                slots[i] = (Slot) { .fd = -1 };
                free_slots[l->n_free++] = o->connections - 1 - i;
        }

        l->start_usec = now_usec();
        uint64_t end = l->start_usec + o->duration_usec;
        uint64_t hard_end = end + (o->timeout_usec > 0 ? MIN(o->timeout_usec, END_GRACE_USEC) : END_GRACE_USEC);
        uint64_t next_tick = l->start_usec + USEC_PER_SEC, next_expire = l->start_usec + USEC_PER_SEC / 10;

        for (;;) {
                uint64_t now = now_usec(), wake;

                if (!l->stopping && (now >= end || echoc_interrupted))
                        load_stop(l);
                if (l->stopping && l->n_busy == 0)
                        break;
                if (now >= hard_end || (l->stopping && echoc_interrupted > 1))
                        break;

                uint64_t due = load_fill(l, now);
                wake = MIN(next_tick, next_expire);
                wake = MIN(wake, l->stopping ? hard_end : end);
                if (due > 0)
                        wake = MIN(wake, due);
                int timeout = wake > now ? (int) ((wake - now + 999) / 1000) : 0;

                int n = epoll_wait(ep, events, EVENTS_MAX, timeout);
                if (n < 0 && errno != EINTR) {
                        snprintf(s->error, sizeof(s->error), "epoll_wait: %s", strerror(errno));
                        break;
                }
                for (int k = 0; k < n; k++)
                        load_handle(l, events[k].data.u32, events[k].events);

                now = now_usec();
                if (now >= next_expire) {
                        load_expire(l, now);
                        next_expire = now + USEC_PER_SEC / 10;
                }
                if (now >= next_tick) {
                        load_tick(l, now, tty);
                        next_tick += USEC_PER_SEC;
                }
        }

        for (unsigned i = 0; i < o->connections; i++)
                if (slots[i].state != SLOT_FREE) {
                        l->res.unfinished++;
                        slot_close(l, i);
                }
        l->res.elapsed_usec = now_usec() - l->start_usec;
        if (l->cur.ok || l->cur.failed || l->cur.round_trips)
                load_tick(l, now_usec(), false);

        if (s->error[0])
                status = EXIT_ERROR;
        /* refusals are the server's admission policy under load: reported, not an echo failure */
        else if (l->res.mismatches > 0 || l->res.failed + l->res.timeouts > 0 || l->res.round_trips == 0)
                status = EXIT_MISMATCH;
        else
                status = EXIT_INTACT;
        status = report_load_end(s, &l->res, status);
        free(l->res.intervals);
        return status;
}
