/* The echo loop: one accepted connection, echoed until the peer is done (RFC 862).
 *
 * Non-blocking socket, ppoll, and zero-copy: data is splice()d from the socket into a pipe and
 * from the pipe back to the socket, so it never crosses into user space and the child touches no
 * buffer memory. The pipe is made at the first data (a connection that never sends costs none);
 * where splice cannot be used (pipe2 fails, e.g. out of fds, or splice is refused for this
 * socket) the loop falls back to read/write through one static buffer, touched only then.
 * Reading stops while the pipe (or buffer) is full, so a client that does not read its echo is
 * held back by TCP flow control, not by our memory. On the peer's FIN we echo what is pending,
 * then shutdown(SHUT_WR): the peer gets every byte and a FIN, never an RST. The child never logs:
 * the master records how it ended from the exit code.
 *
 * SIGPIPE must be ignored (child.c does): splice() has no MSG_NOSIGNAL.
 *
 * Syscalls: ppoll, pipe2, fcntl (F_GETFL/F_SETFL, F_GETPIPE_SZ, F_SETPIPE_SZ), splice, read and
 * sendto (the fallback; read also after our FIN), shutdown, close; clock_gettime is the vDSO. */
#include "echod/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shared/io.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

#define WORKER_BUFFER (128 * 1024)
/* the pipe grows to this once a connection fills the default one (64 KiB): bulk transfers then
 * move 256 KiB per splice pair; short connections never pay for it. Best effort. */
#define WORKER_PIPE_MAX (256 * 1024)

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

const char *worker_exit_reason(int code) {
        return code >= 0 && code < _WORKER_EXIT_MAX ? exit_reasons[code] : "unknown-exit";
}

static int errno_to_exit(int err) {
        return err == ECONNRESET || err == EPIPE || err == ETIMEDOUT ? WORKER_PEER_RESET : WORKER_IO_ERROR;
}

static void account(SlotShared *slot, _Atomic uint64_t *counter, size_t n, uint64_t now) {
        if (!slot)
                return;
        atomic_store_explicit(counter, atomic_load_explicit(counter, memory_order_relaxed) + n,
                              memory_order_relaxed);
        atomic_store_explicit(&slot->last_active_usec, now, memory_order_relaxed);
}

/* Wait for events until deadline (0 = none). Returns >0 ready, 0 timed out, -EINTR, -errno. */
static int wait_fd(int fd, short events, short *revents, uint64_t deadline, const sigset_t *mask) {
        struct pollfd pfd = { .fd = fd, .events = events };
        struct timespec ts, *tsp = NULL;

        if (deadline) {
                uint64_t now = now_usec();
                if (now >= deadline)
                        return 0;
                uint64_t left = deadline - now;
                ts = (struct timespec) { .tv_sec = (time_t) (left / USEC_PER_SEC),
                                         .tv_nsec = (long) (left % USEC_PER_SEC * NSEC_PER_USEC) };
                tsp = &ts;
        }
        int r = ppoll(&pfd, 1, tsp, mask);
        if (r < 0)
                return negative_errno();
        *revents = pfd.revents;
        return r;
}

/* After our FIN: read and discard until the peer's FIN, so that close() sends no RST. */
static void linger_until_eof(int fd, uint64_t deadline, const sigset_t *mask) {
        char sink[4096];

        for (;;) {
                ssize_t n = read(fd, sink, sizeof(sink));
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                        return;
                if (n > 0)
                        continue;
                short revents;
                int r = wait_fd(fd, POLLIN, &revents, deadline, mask);
                if (r == 0 || (r < 0 && r != -EINTR))
                        return;
        }
}

/* The earliest deadline that applies now, and which exit it means. */
static uint64_t next_deadline(bool pending, uint64_t last_in, uint64_t last_out, uint64_t session_end,
                              const WorkerParams *p, int *ret_exit) {
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
        return d;
}

/* Where pending echo lives: in the pipe (splice) or in the buffer (read/write fallback). */
typedef struct Echo {
        int fd;
        int pipe[2];     /* -1 until the first data; stays -1 in the fallback */
        bool no_splice;  /* fallback: read/write through buf */
        bool pipe_full;  /* splice-in found no room in the pipe: stop asking for POLLIN */
        bool pipe_grown; /* tried F_SETPIPE_SZ */
        size_t capacity; /* of the pipe or buffer */
        size_t pending;  /* bytes read, not yet echoed */
        char *buf;       /* fallback only */
        size_t start, end;
} Echo;

static char fallback_buf[WORKER_BUFFER];

static void echo_use_buffer(Echo *e) {
        e->no_splice = true;
        e->buf = fallback_buf;
        e->capacity = sizeof(fallback_buf);
}

/* Move what is in the pipe into the buffer and continue with read/write. Returns 0 or -errno. */
static int echo_pipe_to_buffer(Echo *e) {
        echo_use_buffer(e);
        e->start = 0;
        e->end = 0;
        while (e->end < e->pending) {
                ssize_t n = read(e->pipe[0], e->buf + e->end, e->pending - e->end);
                if (n <= 0)
                        return n < 0 ? negative_errno() : -EIO;
                e->end += (size_t) n;
        }
        e->pipe[0] = safe_close(e->pipe[0]);
        e->pipe[1] = safe_close(e->pipe[1]);
        return 0;
}

/* Read up to room bytes into the pending echo. Returns >0 bytes, 0 at EOF, -EAGAIN, -errno. */
static ssize_t echo_in(Echo *e, size_t room) {
        ssize_t n;

        if (!e->no_splice && e->pipe[0] < 0) {
                if (pipe2(e->pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
                        e->pipe[0] = e->pipe[1] = -1;
                        echo_use_buffer(e); /* e.g. EMFILE: echo anyway, by copying */
                } else {
                        int size = fcntl(e->pipe[0], F_GETPIPE_SZ);
                        e->capacity = size > 0 ? (size_t) size : 4096;
                }
        }
        if (e->no_splice) {
                n = read(e->fd, e->buf + e->end, room);
                if (n > 0)
                        e->end += (size_t) n;
        } else {
                n = splice(e->fd, NULL, e->pipe[1], NULL, room, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (n < 0 && errno == EAGAIN && e->pending > 0)
                        /* the socket was readable, so the pipe has no free slot (a pipe holds
                         * 16 buffers; small segments fill them before its bytes): wait for
                         * POLLOUT instead of spinning on POLLIN */
                        e->pipe_full = true;
                else if (n < 0 && e->pending == 0 && (errno == EINVAL || errno == ENOSYS || errno == EPERM)) {
                        /* this socket cannot be spliced: copy instead */
                        e->pipe[0] = safe_close(e->pipe[0]);
                        e->pipe[1] = safe_close(e->pipe[1]);
                        echo_use_buffer(e);
                        return echo_in(e, MIN(room, e->capacity));
                }
        }
        if (n < 0)
                return negative_errno();
        e->pending += (size_t) n;
        if (!e->no_splice && !e->pipe_grown && e->pending >= e->capacity / 2) {
                /* a bulk transfer: a bigger pipe halves the splice calls; refusal is fine */
                e->pipe_grown = true;
                int size = fcntl(e->pipe[0], F_SETPIPE_SZ, WORKER_PIPE_MAX);
                if (size > 0)
                        e->capacity = (size_t) size;
        }
        return n;
}

/* Echo back what is pending. Returns >0 bytes, -EAGAIN, -errno. */
static ssize_t echo_out(Echo *e) {
        ssize_t n;

        if (e->no_splice) {
                n = send(e->fd, e->buf + e->start, e->end - e->start, MSG_NOSIGNAL);
                if (n < 0)
                        return negative_errno();
                e->start += (size_t) n;
                if (e->start == e->end)
                        e->start = e->end = 0;
                else if (e->start >= e->capacity / 2 && e->end == e->capacity) {
                        memmove(e->buf, e->buf + e->start, e->end - e->start);
                        e->end -= e->start;
                        e->start = 0;
                }
        } else {
                n = splice(e->pipe[0], NULL, e->fd, NULL, e->pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (n < 0) {
                        if (errno != EINVAL && errno != ENOSYS && errno != EPERM)
                                return negative_errno();
                        /* the socket refuses spliced pages: take them back and copy */
                        int r = echo_pipe_to_buffer(e);
                        return r < 0 ? r : echo_out(e);
                }
                e->pipe_full = false;
        }
        e->pending -= (size_t) n;
        return n;
}

/* Room to read into now. */
static size_t echo_room(const Echo *e) {
        if (e->no_splice)
                return e->capacity - e->end;
        if (e->pipe[0] < 0)
                return WORKER_BUFFER; /* no pipe yet: it is made on the first data */
        return e->pipe_full ? 0 : e->capacity - e->pending;
}

static int echo_loop(Echo *e, SlotShared *slot, const WorkerParams *p, volatile sig_atomic_t *stop,
                     const sigset_t *poll_mask) {
        int fd = e->fd;
        bool eof = false, draining = false, capped = false;
        uint64_t now = now_usec(), last_in = now, last_out = now, total_in = 0;
        uint64_t session_end = p->max_session ? now + (uint64_t) p->max_session * USEC_PER_SEC : 0;
        int r, timeout_exit = WORKER_IDLE_TIMEOUT, finish = WORKER_CLEAN;

        r = fd_set_nonblock(fd, 1);
        if (r < 0)
                return WORKER_SETUP_FAILED;

        for (;;) {
                short events = 0, revents = 0;

                if (stop && *stop && !draining) {
                        draining = true;
                        finish = WORKER_DRAINED;
                }
                if ((eof || draining || capped) && e->pending == 0)
                        break;
                if (!eof && !draining && !capped && echo_room(e) > 0)
                        events |= POLLIN;
                if (e->pending > 0)
                        events |= POLLOUT;

                uint64_t deadline = next_deadline(e->pending > 0, last_in, last_out, session_end, p, &timeout_exit);
                r = wait_fd(fd, events, &revents, deadline, poll_mask);
                if (r == -EINTR)
                        continue;
                if (r < 0)
                        return WORKER_IO_ERROR;
                if (r == 0) {
                        if (timeout_exit != WORKER_MAX_SESSION)
                                return timeout_exit;
                        /* lifetime over: stop reading, echo what we hold, FIN (bounded below) */
                        draining = true;
                        finish = WORKER_MAX_SESSION;
                        session_end = 0;
                        if (!p->stall_timeout)
                                session_end = now_usec() + LINGER_USEC; /* never hang on a non-reader */
                        continue;
                }

                if ((events & POLLIN) && (revents & (POLLIN | POLLHUP | POLLERR))) {
                        size_t room = echo_room(e);
                        if (p->max_bytes && p->max_bytes - total_in < room)
                                room = (size_t) (p->max_bytes - total_in);
                        ssize_t n = echo_in(e, room);
                        if (n > 0) {
                                last_in = now_usec();
                                total_in += (uint64_t) n;
                                account(slot, slot ? &slot->bytes_in : NULL, (size_t) n, last_in);
                                if (p->max_bytes && total_in >= p->max_bytes) {
                                        capped = true;
                                        finish = WORKER_MAX_BYTES;
                                }
                        } else if (n == 0)
                                eof = true;
                        else if (n != -EAGAIN && n != -EINTR)
                                return errno_to_exit((int) -n);
                }
                if (e->pending > 0 && (revents & (POLLOUT | POLLHUP | POLLERR))) {
                        ssize_t n = echo_out(e);
                        if (n > 0) {
                                last_out = now_usec();
                                account(slot, slot ? &slot->bytes_out : NULL, (size_t) n, last_out);
                        } else if (n != -EAGAIN && n != -EINTR)
                                return errno_to_exit((int) -n);
                }
                if (!(events & POLLIN) && e->pending == 0 && (revents & (POLLERR | POLLHUP)))
                        return WORKER_PEER_RESET;
        }

        /* everything read has been echoed: send our FIN */
        if (shutdown(fd, SHUT_WR) < 0)
                return errno_to_exit(errno);
        if (!eof)
                linger_until_eof(fd, now_usec() + LINGER_USEC, poll_mask);
        return finish;
}

int worker_echo(int fd, SlotShared *slot, const WorkerParams *p, volatile sig_atomic_t *stop,
                const sigset_t *poll_mask) {
        Echo e = { .fd = fd, .pipe = { -1, -1 } };
        int r = echo_loop(&e, slot, p, stop, poll_mask);

        safe_close(e.pipe[0]);
        safe_close(e.pipe[1]);
        return r;
}
