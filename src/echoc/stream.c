/* Stream mode: stdin to the server, the verified echo to stdout, both directions at once.
 *
 * Sent bytes stay in a bounded ring (the unverified window) until their echo arrives and
 * matches; stdin is not read while the window is full, so memory stays bounded whatever the
 * input size. stdout only ever receives bytes that matched. On stdin EOF the socket is
 * half-closed and the rest of the echo read until the server's EOF. */
#include <errno.h>
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
#include "shared/io.h"
#include "shared/macro.h"
#include "shared/proxy.h"
#include "shared/timeutil.h"

#define STREAM_WINDOW (4u << 20)
#define STREAM_CHUNK (256u << 10)

static void ring_donep(ByteRing *r) {
        ring_done(r);
}

static int stream_fail(Session *s, StreamResult *res, uint64_t start, int status, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));

static int stream_fail(Session *s, StreamResult *res, uint64_t start, int status, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(s->error, sizeof(s->error), fmt, ap);
        va_end(ap);
        res->elapsed_usec = now_usec() - start;
        return report_stream(s, res, status);
}

int stream_run(Session *s) {
        const Options *o = s->opts;
        _cleanup_(ring_donep) ByteRing ring = { 0 };
        _cleanup_(freep) uint8_t *rbuf = NULL;
        _cleanup_(closep) int fd = -1;
        StreamResult res = { 0 };
        uint8_t header[PROXY_HEADER_MAX];
        bool stdin_eof = false, shut = false, to_stdout = o->output == OUTPUT_TEXT;
        uint64_t start, last_progress;
        int r;

        fd = session_connect(s);
        if (fd < 0)
                return report_failure(s, EXIT_ERROR);
        start = last_progress = now_usec();

        r = session_proxy_header(s, fd, header, sizeof(header));
        if (r > 0)
                r = net_send_all(fd, header, (size_t) r, o->timeout_usec);
        if (r < 0)
                return stream_fail(s, &res, start, EXIT_ERROR, "cannot send the PROXY header: %s", strerror(-r));

        if (ring_init(&ring, STREAM_WINDOW) < 0 || !(rbuf = malloc(STREAM_CHUNK)))
                return stream_fail(s, &res, start, EXIT_ERROR, "out of memory");

        for (;;) {
                struct pollfd p[2] = {
                        { .fd = fd, .events = POLLIN },
                        { .fd = stdin_eof || ring_room(&ring) == 0 ? -1 : STDIN_FILENO, .events = POLLIN },
                };
                bool waiting = ring.sent > ring.verified || shut;
                int timeout = -1;

                if (ring.filled > ring.sent)
                        p[0].events |= POLLOUT;
                if (waiting && o->timeout_usec > 0) {
                        uint64_t now = now_usec(), due = last_progress + o->timeout_usec;
                        timeout = now >= due ? 0 : (int) MIN((due - now + 999) / 1000, (uint64_t) INT32_MAX);
                }

                r = poll(p, 2, timeout);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return stream_fail(s, &res, start, EXIT_ERROR, "poll: %s", strerror(errno));
                }
                if (r == 0 && waiting && now_usec() >= last_progress + o->timeout_usec) {
                        if (ring.sent > ring.verified)
                                return stream_fail(s, &res, start, EXIT_MISMATCH,
                                                   "no echo for %.1f s: %llu of %llu bytes echoed",
                                                   (double) o->timeout_usec / 1e6,
                                                   (unsigned long long) ring.verified, (unsigned long long) ring.sent);
                        /* everything came back intact; the server just keeps the connection open */
                        fprintf(stderr, "echoc: warning: server did not close within %.1f s after the echo\n",
                                (double) o->timeout_usec / 1e6);
                        break;
                }

                /* stdin → ring */
                if (p[1].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) {
                        uint8_t *span;
                        size_t room = ring_fill_span(&ring, &span);
                        ssize_t n = (p[1].revents & POLLNVAL) ? 0 : read(STDIN_FILENO, span, room);

                        if (n < 0 && errno != EINTR && errno != EAGAIN)
                                return stream_fail(s, &res, start, EXIT_ERROR, "cannot read stdin: %s", strerror(errno));
                        if (n == 0)
                                stdin_eof = true;
                        if (n > 0)
                                ring_filled(&ring, (size_t) n);
                }

                /* ring → socket */
                while (ring.filled > ring.sent) {
                        const uint8_t *span;
                        size_t len = ring_send_span(&ring, &span);
                        ssize_t n = send(fd, span, len, MSG_NOSIGNAL);

                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                if (errno == EAGAIN)
                                        break;
                                return stream_fail(s, &res, start, EXIT_MISMATCH,
                                                   "cannot send after %llu bytes (%llu echoed): %s",
                                                   (unsigned long long) ring.sent, (unsigned long long) ring.verified,
                                                   strerror(errno));
                        }
                        if (ring.sent == ring.verified)
                                last_progress = now_usec(); /* the echo clock starts with the first outstanding byte */
                        ring_sent(&ring, (size_t) n);
                        res.sent = ring.sent;
                }

                if (stdin_eof && ring.filled == ring.sent && !shut) {
                        if (shutdown(fd, SHUT_WR) < 0)
                                return stream_fail(s, &res, start, EXIT_MISMATCH, "shutdown: %s", strerror(errno));
                        shut = true;
                        if (ring.sent == ring.verified)
                                last_progress = now_usec();
                }

                /* socket → compare → stdout */
                if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
                        ssize_t n = recv(fd, rbuf, STREAM_CHUNK, 0);

                        if (n < 0) {
                                if (errno == EINTR || errno == EAGAIN)
                                        continue;
                                if (errno == ECONNRESET)
                                        return stream_fail(s, &res, start, EXIT_MISMATCH,
                                                           "connection reset by peer after %llu of %llu bytes echoed",
                                                           (unsigned long long) ring.verified,
                                                           (unsigned long long) ring.sent);
                                return stream_fail(s, &res, start, EXIT_MISMATCH,
                                                   "receive failed after %llu of %llu bytes echoed: %s",
                                                   (unsigned long long) ring.verified, (unsigned long long) ring.sent,
                                                   strerror(errno));
                        }
                        if (n == 0) {
                                if (ring.verified < ring.filled || !stdin_eof)
                                        return stream_fail(s, &res, start, EXIT_MISMATCH,
                                                           "short echo: server closed the connection after %llu of %llu bytes",
                                                           (unsigned long long) ring.verified,
                                                           (unsigned long long) MAX(ring.filled, ring.sent));
                                break; /* all echoed, then EOF: done */
                        }

                        size_t ok = ring_verify(&ring, rbuf, (size_t) n);
                        res.echoed = ring.verified;
                        if (ok > 0) {
                                last_progress = now_usec();
                                if (to_stdout && (r = write_full(STDOUT_FILENO, rbuf, ok)) < 0)
                                        return stream_fail(s, &res, start, EXIT_ERROR, "cannot write stdout: %s",
                                                           strerror(-r));
                        }
                        if (ok < (size_t) n) {
                                if (ring.verified < ring.sent) {
                                        res.mismatch = true;
                                        res.mismatch_offset = ring.verified;
                                        return stream_fail(s, &res, start, EXIT_MISMATCH,
                                                           "mismatch at byte offset %llu: sent 0x%02x, received 0x%02x",
                                                           (unsigned long long) ring.verified,
                                                           ring_byte_at(&ring, ring.verified), rbuf[ok]);
                                }
                                res.mismatch = true;
                                res.mismatch_offset = ring.sent;
                                return stream_fail(s, &res, start, EXIT_MISMATCH,
                                                   "server sent %zu bytes more than it was sent (at byte offset %llu)",
                                                   (size_t) n - ok, (unsigned long long) ring.sent);
                        }
                }
        }

        res.elapsed_usec = now_usec() - start;
        return report_stream(s, &res, EXIT_INTACT);
}
