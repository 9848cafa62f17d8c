/* The echo loop: one accepted connection, echoed until the peer is done (RFC 862).
 *
 * One buffer. With nothing to send, the worker sleeps in a blocking recv() (SO_RCVTIMEO is the
 * next deadline): one system call per echo besides the send, as a textbook read/write loop; every
 * other call is MSG_DONTWAIT, and ppoll() waits only while an echo is pending. Reading stops while
 * the buffer is full, so a client that does not read its echo is held back by TCP flow control,
 * not by our memory. On the peer's FIN we echo what is pending, then shutdown(SHUT_WR): the peer
 * gets every byte and a FIN, never an RST. The child never logs: the master records how it ended
 * from the exit code.
 *
 * A stop (SIGTERM) does not cut off what the client has already sent: the worker goes on reading
 * and echoing until the connection has been quiet for a round trip and a margin (drain_quiet()),
 * at most DRAIN_MAX_USEC, then echoes what it holds and sends its FIN. A connection admitted just
 * before the stop, whose first bytes are still on the wire, is served, not closed empty. */
#include "echod/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shared/io.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

#define WORKER_BUFFER (128 * 1024)

static const char *const exit_reasons[_WORKER_EXIT_MAX] = {
        [WORKER_CLEAN] = "clean",
        [WORKER_SETUP_FAILED] = "setup-failed",
        [WORKER_IDLE_TIMEOUT] = "idle-timeout",
        [WORKER_PEER_RESET] = "peer-reset",
        [WORKER_IO_ERROR] = "io-error",
        [WORKER_DRAINED] = "drained",
        [WORKER_STALL_TIMEOUT] = "stall-timeout",
        [WORKER_MAX_SESSION] = "max-session",
        [WORKER_MAX_BYTES] = "max-bytes",
};

/* After our FIN, how long to wait for the peer's before closing anyway. */
#define LINGER_USEC (5 * USEC_PER_SEC)
/* A SIGTERM that lands between the loop's check and its ppoll() is seen this much later at most
 * (a blocking recv() is cut short by worker_request_stop() itself). */
#define STOP_CHECK_USEC (250 * USEC_PER_MSEC)
/* A stop reads on until the client is quiet for DRAIN_QUIET_MIN_USEC plus its round trip
 * (srtt + 4 rttvar, twice), never longer than DRAIN_MAX_USEC after the stop (a client that
 * streams without pause is cut there, as before: echo what is held, FIN). */
#define DRAIN_QUIET_MIN_USEC (100 * USEC_PER_MSEC)
#define DRAIN_MAX_USEC (1 * USEC_PER_SEC)
/* SO_RCVTIMEO is set again only when it is this far from the next deadline */
#define RCVTIMEO_SLACK_USEC (10 * USEC_PER_MSEC)

/* The clock is read lazily: after a wait, and otherwise reused for up to this many readings (a
 * stream that never waits still moves its stamps every few ms). A short connection, whose request
 * and FIN were queued before it started, never reads it: it has the spawner's reading from just
 * before the fork, and the vDSO's two pages would be two page faults in a fresh child. */
#define CLOCK_REUSE_MAX 64

typedef struct Clock {
        uint64_t now;
        unsigned reused;
        bool stale; /* a wait returned since now was read */
} Clock;

static uint64_t clock_get(Clock *c) {
        if (c->stale || ++c->reused > CLOCK_REUSE_MAX) {
                c->now = worker_now();
                c->stale = false;
                c->reused = 0;
        }
        return c->now;
}

/* All the worker writes, in one place: the flags share the first page of the buffer, which the
 * first read dirties anyway (a separate global would cost every child a page of its own). */
static struct {
        volatile sig_atomic_t stop;
        volatile sig_atomic_t kicked; /* the handler set SO_RCVTIMEO: ours must be set again */
        volatile sig_atomic_t armed;  /* fd is set */
        int fd;
        char buf[WORKER_BUFFER];
} w;

void worker_request_stop(void) {
        int saved = errno;

        w.stop = 1;
        w.kicked = 1;
        /* a recv() about to block returns at once; one blocking already gets EINTR */
        if (w.armed)
                (void) setsockopt(w.fd, SOL_SOCKET, SO_RCVTIMEO, &(struct timeval) { .tv_usec = 1 },
                                  sizeof(struct timeval));
        errno = saved;
}

const char *worker_exit_reason(int code) {
        return code >= 0 && code < _WORKER_EXIT_MAX ? exit_reasons[code] : "unknown-exit";
}

static int errno_to_exit(int err) {
        return err == ECONNRESET || err == EPIPE || err == ETIMEDOUT ? WORKER_PEER_RESET : WORKER_IO_ERROR;
}

/* Wait for events until deadline (0 = none). Returns >0 ready, 0 timed out, -EINTR, -errno. */
static int wait_fd(int fd, short events, short *revents, uint64_t deadline) {
        struct pollfd pfd = { .fd = fd, .events = events };
        struct timespec ts, *tsp = NULL;

        if (deadline) {
                uint64_t now = worker_now();
                if (now >= deadline)
                        return 0;
                uint64_t left = deadline - now;
                ts = (struct timespec) { .tv_sec = (time_t) (left / USEC_PER_SEC),
                                         .tv_nsec = (long) (left % USEC_PER_SEC * NSEC_PER_USEC) };
                tsp = &ts;
        }
        int r = ppoll(&pfd, 1, tsp, NULL);
        if (r < 0)
                return negative_errno();
        *revents = pfd.revents;
        return r;
}

/* After our FIN: read and discard until the peer's FIN, so that close() sends no RST. */
static void linger_until_eof(int fd, uint64_t deadline) {
        char sink[4096];

        for (;;) {
                ssize_t n = recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                        return;
                if (n > 0)
                        continue;
                short revents;
                int r = wait_fd(fd, POLLIN, &revents, deadline);
                if (r == 0 || (r < 0 && r != -EINTR))
                        return;
        }
}

/* Make a blocking recv() return by deadline (0 = none), give or take RCVTIMEO_SLACK_USEC. *cur
 * is what is set (0 = none). Returns 1, 0 if deadline has passed, or -errno. */
static int set_rcvtimeo(int fd, uint64_t deadline, uint64_t now, uint64_t *cur) {
        uint64_t want = 0;

        if (deadline) {
                if (now >= deadline)
                        return 0;
                want = deadline - now;
        }
        if (want == *cur || (want && *cur && (want > *cur ? want - *cur : *cur - want) < RCVTIMEO_SLACK_USEC))
                return 1;
        struct timeval tv = { .tv_sec = (time_t) (want / USEC_PER_SEC), .tv_usec = (suseconds_t) (want % USEC_PER_SEC) };
        if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
                return negative_errno();
        *cur = want;
        return 1;
}

/* How long a client must be quiet before a stop takes it as done: what it sent before the stop
 * is on the wire for at most a round trip (TCP's own estimate; none on a non-TCP socket). */
static uint64_t drain_quiet(int fd) {
        struct tcp_info ti;
        socklen_t len = sizeof(ti);
        uint64_t q = DRAIN_QUIET_MIN_USEC;

        if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && len >= offsetof(struct tcp_info, tcpi_rttvar) + 4)
                q += 2 * ((uint64_t) ti.tcpi_rtt + 4 * (uint64_t) ti.tcpi_rttvar);
        return MIN(q, DRAIN_MAX_USEC);
}

/* The earliest deadline that applies now, and which exit it means (WORKER_DRAINED: the end of a
 * stop's reading, not an exit). */
static uint64_t next_deadline(bool pending, uint64_t last_in, uint64_t last_out, uint64_t session_end,
                              uint64_t drain_end, const WorkerParams *p, int *ret_exit) {
        uint64_t d = 0;

        if (!pending && p->idle_timeout) {
                d = MAX(last_in, last_out) + (uint64_t) p->idle_timeout * USEC_PER_SEC;
                *ret_exit = WORKER_IDLE_TIMEOUT;
        }
        if (pending && p->stall_timeout) {
                d = last_out + (uint64_t) p->stall_timeout * USEC_PER_SEC;
                *ret_exit = WORKER_STALL_TIMEOUT;
        }
        if (session_end && (!d || session_end <= d)) {
                d = session_end;
                *ret_exit = WORKER_MAX_SESSION;
        }
        if (drain_end && (!d || drain_end <= d)) {
                d = drain_end;
                *ret_exit = WORKER_DRAINED;
        }
        return d;
}

int worker_echo(int fd, const WorkerParams *p) {
        char *buf = w.buf;
        size_t start = 0, end = 0;
        bool eof = false, draining = false, capped = false, stopping = false;
        Clock clock = { .now = p->start_usec, .stale = !p->start_usec };
        uint64_t now = clock_get(&clock), last_in = now, last_out = now, total_in = 0;
        uint64_t session_end = p->max_session ? now + (uint64_t) p->max_session * USEC_PER_SEC : 0;
        int r, timeout_exit = WORKER_IDLE_TIMEOUT, finish = WORKER_CLEAN;
        /* Try first, wait only when a read or send would block: a short connection's request is
         * usually waiting when the child starts, and its echo fits the send buffer. */
        bool ready_in = true, ready_out = true, first_read = true;
        uint64_t rcvtimeo = 0; /* what SO_RCVTIMEO is set to, µs */
        uint64_t stop_at = 0, quiet = 0, drain_end = 0; /* a stop's reading: see the top */

        w.fd = fd;
        w.armed = 1; /* stop is checked after this, before any wait */

        for (;;) {
                short events = 0, revents = 0;
                bool block = false;

                if (w.kicked) {
                        w.kicked = 0;
                        rcvtimeo = UINT64_MAX; /* the handler set its own (a SIGTERM may come twice) */
                }
                if (w.stop && !stopping) {
                        stopping = true;
                        clock.stale = true;
                        stop_at = clock_get(&clock);
                        quiet = drain_quiet(fd);
                }
                if (stopping && !draining) {
                        drain_end = MIN(stop_at + DRAIN_MAX_USEC, MAX(stop_at, last_in) + quiet);
                        if (eof || capped || clock_get(&clock) >= drain_end) {
                                draining = true;
                                drain_end = 0;
                                if (!eof && !capped)
                                        finish = WORKER_DRAINED;
                        }
                }
                if ((eof || draining || capped) && start == end)
                        break;
                if (!eof && !draining && !capped && end < sizeof(w.buf))
                        events |= POLLIN;
                if (start < end)
                        events |= POLLOUT;

                uint64_t deadline = next_deadline(start < end, last_in, last_out, session_end, drain_end, p,
                                                  &timeout_exit);
                revents = events & ((ready_in ? POLLIN : 0) | (ready_out ? POLLOUT : 0));
                if (revents)
                        r = deadline && clock_get(&clock) >= deadline ? 0 : 1;
                else if (events == POLLIN) {
                        /* nothing to send: sleep in recv() itself, until data, the deadline or SIGTERM
                         * (whose handler may have run before our setsockopt: look again after it) */
                        r = set_rcvtimeo(fd, deadline, clock_get(&clock), &rcvtimeo);
                        if (r > 0 && w.stop && !stopping)
                                continue;
                        block = true;
                        revents = POLLIN;
                } else {
                        uint64_t until = worker_now() + STOP_CHECK_USEC;
                        r = wait_fd(fd, events, &revents, deadline && deadline < until ? deadline : until);
                        clock.stale = true;
                        if (r == 0 && (!deadline || clock_get(&clock) < deadline))
                                continue; /* only STOP_CHECK_USEC passed */
                        if (events & POLLIN)
                                ready_in = revents & (POLLIN | POLLHUP | POLLERR);
                        if (events & POLLOUT)
                                ready_out = revents & (POLLOUT | POLLHUP | POLLERR);
                }
                if (r == -EINTR)
                        continue;
                if (r < 0)
                        return WORKER_IO_ERROR;
                if (r == 0) {
                        if (timeout_exit == WORKER_DRAINED)
                                continue; /* a stop's reading is over: the top ends it */
                        if (timeout_exit != WORKER_MAX_SESSION)
                                return timeout_exit;
                        /* lifetime over: stop reading, echo what we hold, FIN (bounded below) */
                        draining = true;
                        finish = WORKER_MAX_SESSION;
                        session_end = 0;
                        if (!p->stall_timeout)
                                session_end = clock_get(&clock) + LINGER_USEC; /* never hang on a non-reader */
                        continue;
                }

                if ((events & POLLIN) && (revents & (POLLIN | POLLHUP | POLLERR))) {
                        size_t room = sizeof(w.buf) - end;
                        if (p->max_bytes && p->max_bytes - total_in < room)
                                room = (size_t) (p->max_bytes - total_in);
                        ssize_t n = recv(fd, buf + end, room, block ? 0 : MSG_DONTWAIT);
                        if (block)
                                clock.stale = true;
                        /* short: the queue is most likely empty; but the first data was queued
                         * while we were forked, maybe with the peer's FIN behind it: one more
                         * try finds that without a setsockopt() and a wait */
                        ready_in = n == (ssize_t) room || (first_read && n > 0);
                        first_read = false;
                        if (n > 0) {
                                last_in = clock_get(&clock);
                                end += (size_t) n;
                                total_in += (uint64_t) n;
                                if (p->max_bytes && total_in >= p->max_bytes) {
                                        capped = true;
                                        finish = WORKER_MAX_BYTES;
                                }
                        } else if (n == 0)
                                eof = true;
                        else if (errno == EAGAIN && block) {
                                /* SO_RCVTIMEO ran out, or this socket was handed over
                                 * non-blocking and recv() did not wait at all: make sure it
                                 * blocks from now on (the master accepts it blocking, so
                                 * this costs nothing per connection, only per timeout) */
                                if (fd_set_nonblock(fd, 0) < 0)
                                        return WORKER_IO_ERROR;
                        } else if (errno != EAGAIN && errno != EINTR)
                                return errno_to_exit(errno);
                }
                if (start < end && ((revents & (POLLOUT | POLLHUP | POLLERR)) || ready_out)) {
                        ssize_t n = send(fd, buf + start, end - start, MSG_NOSIGNAL | MSG_DONTWAIT);
                        ready_out = n == (ssize_t) (end - start);
                        if (n > 0) {
                                last_out = clock_get(&clock);
                                start += (size_t) n;
                                if (start == end)
                                        start = end = 0;
                                else if (start >= sizeof(w.buf) / 2 && end == sizeof(w.buf)) {
                                        memmove(buf, buf + start, end - start);
                                        end -= start;
                                        start = 0;
                                }
                        } else if (n < 0 && errno != EAGAIN && errno != EINTR)
                                return errno_to_exit(errno);
                }
                if (!(events & POLLIN) && !(start < end) && (revents & (POLLERR | POLLHUP)))
                        return WORKER_PEER_RESET;
        }

        /* everything read has been echoed: send our FIN. The connection counts against the
         * limits until this process is gone (a peer that never sends its FIN holds it for the
         * linger, as long as any other connection) */
        if (shutdown(fd, SHUT_WR) < 0)
                return errno_to_exit(errno);
        if (!eof)
                linger_until_eof(fd, worker_now() + LINGER_USEC);
        return finish;
}
