/* Benchmark client helpers that echoc does not cover (echoc does the rate and latency runs).
 *
 *   benchcli stream HOST PORT BYTES   one connection: send BYTES of pseudo-random data while
 *                                     reading the echo, verify every byte, half-close, expect
 *                                     EOF; prints "bytes seconds" (exit 1 on any mismatch)
 *   benchcli hold HOST PORT N         open N connections, echo 64 bytes on each (verified),
 *                                     print "held N" (stopping at the first connection that
 *                                     gets no echo) and wait for a line on stdin; then echo
 *                                     64 more bytes on every one, print "echoed K of N", close
 *
 * Loopback benchmarking only; bounded by its arguments and a 10 s timeout per wait. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024)
#define PATTERN (1024 * 1024) /* the stream repeats a 1 MiB random block at shifting offsets */
#define WAIT_MS 10000

static struct sockaddr_in addr;

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static int connect_to(void) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *) &addr, sizeof(addr)) < 0) {
                if (fd >= 0)
                        close(fd);
                return -1;
        }
        return fd;
}

/* byte i of the stream */
static inline const uint8_t *pattern_at(const uint8_t *pat, uint64_t i, size_t *ret_len) {
        uint64_t off = i % PATTERN;
        *ret_len = PATTERN - off;
        return pat + off;
}

static int do_stream(uint64_t total) {
        uint8_t *pat = malloc(2 * PATTERN), *rbuf = malloc(CHUNK);
        uint64_t sent = 0, recvd = 0, x = 0x9e3779b97f4a7c15u;
        int fd;

        if (!pat || !rbuf)
                return 2;
        for (size_t i = 0; i < PATTERN; i += 8) { /* xorshift64 */
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                memcpy(pat + i, &x, 8);
        }
        memcpy(pat + PATTERN, pat, PATTERN);
        fd = connect_to();
        if (fd < 0) {
                perror("benchcli: connect");
                return 2;
        }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        double t0 = now();
        while (recvd < total) {
                struct pollfd p = { .fd = fd, .events = POLLIN | (sent < total ? POLLOUT : 0) };
                if (poll(&p, 1, WAIT_MS) <= 0) {
                        fprintf(stderr, "benchcli: stalled at %llu/%llu bytes\n", (unsigned long long) recvd,
                                (unsigned long long) total);
                        return 1;
                }
                if (sent < total && (p.revents & POLLOUT)) {
                        size_t len;
                        const uint8_t *src = pattern_at(pat, sent, &len);
                        if (len > CHUNK)
                                len = CHUNK;
                        if (len > total - sent)
                                len = (size_t) (total - sent);
                        ssize_t n = send(fd, src, len, MSG_NOSIGNAL);
                        if (n > 0) {
                                sent += (uint64_t) n;
                                if (sent == total)
                                        shutdown(fd, SHUT_WR);
                        } else if (n < 0 && errno != EAGAIN) {
                                perror("benchcli: send");
                                return 1;
                        }
                }
                if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
                        ssize_t n = recv(fd, rbuf, CHUNK, 0);
                        if (n == 0) {
                                fprintf(stderr, "benchcli: EOF after %llu of %llu bytes\n",
                                        (unsigned long long) recvd, (unsigned long long) total);
                                return 1;
                        }
                        if (n < 0) {
                                if (errno == EAGAIN)
                                        continue;
                                perror("benchcli: recv");
                                return 1;
                        }
                        size_t len;
                        const uint8_t *want = pattern_at(pat, recvd, &len);
                        /* pat holds two copies of the block, so any n <= CHUNK compares in one go */
                        if (memcmp(rbuf, want, (size_t) n) != 0) {
                                fprintf(stderr, "benchcli: mismatch near byte %llu\n", (unsigned long long) recvd);
                                return 1;
                        }
                        recvd += (uint64_t) n;
                }
        }
        /* the echo is complete: the server must close its side now */
        struct pollfd p = { .fd = fd, .events = POLLIN };
        char c;
        if (poll(&p, 1, WAIT_MS) <= 0 || recv(fd, &c, 1, 0) != 0) {
                fprintf(stderr, "benchcli: no EOF after the echo\n");
                return 1;
        }
        double t = now() - t0;
        printf("%llu %.6f\n", (unsigned long long) recvd, t);
        close(fd);
        return 0;
}

static int echo_once(int fd, unsigned tag) {
        char out[64], in[64];
        size_t got = 0;

        memset(out, 'a' + (int) (tag % 26), sizeof(out));
        memcpy(out, &tag, sizeof(tag));
        if (send(fd, out, sizeof(out), MSG_NOSIGNAL) != (ssize_t) sizeof(out))
                return -1;
        while (got < sizeof(in)) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                if (poll(&p, 1, WAIT_MS) <= 0)
                        return -1;
                ssize_t n = recv(fd, in + got, sizeof(in) - got, 0);
                if (n <= 0)
                        return -1;
                got += (size_t) n;
        }
        return memcmp(in, out, sizeof(out)) == 0 ? 0 : -1;
}

static int do_hold(unsigned n) {
        struct rlimit rl = { n + 64, n + 64 };
        int *fds = calloc(n, sizeof(int));
        unsigned held = 0, ok = 0;
        char line[16];

        if (!fds)
                return 2;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
                perror("benchcli: RLIMIT_NOFILE");
                return 2;
        }
        for (unsigned i = 0; i < n; i++)
                fds[i] = -1;
        for (unsigned i = 0; i < n; i++) {
                fds[i] = connect_to();
                if (fds[i] < 0 || echo_once(fds[i], i) < 0) {
                        /* the server serves no more: stop here rather than wait for each */
                        fprintf(stderr, "benchcli: connection %u: %s\n", i, fds[i] < 0 ? strerror(errno) : "no echo");
                        if (fds[i] >= 0)
                                close(fds[i]);
                        fds[i] = -1;
                        break;
                }
                held++;
        }
        printf("held %u\n", held);
        fflush(stdout);
        if (!fgets(line, sizeof(line), stdin))
                line[0] = 0;
        for (unsigned i = 0; i < n; i++)
                if (fds[i] >= 0 && echo_once(fds[i], i + n) == 0)
                        ok++;
        printf("echoed %u of %u\n", ok, n);
        fflush(stdout);
        for (unsigned i = 0; i < n; i++)
                if (fds[i] >= 0)
                        close(fds[i]);
        return held == n && ok == n ? 0 : 1;
}

int main(int argc, char **argv) {
        if (argc != 5 || inet_pton(AF_INET, argv[2], &addr.sin_addr) != 1) {
                fprintf(stderr, "usage: benchcli stream|hold HOST PORT BYTES|N\n");
                return 2;
        }
        addr.sin_family = AF_INET;
        addr.sin_port = htons((uint16_t) atoi(argv[3]));
        if (strcmp(argv[1], "stream") == 0)
                return do_stream(strtoull(argv[4], NULL, 10));
        if (strcmp(argv[1], "hold") == 0)
                return do_hold((unsigned) strtoul(argv[4], NULL, 10));
        fprintf(stderr, "benchcli: unknown mode %s\n", argv[1]);
        return 2;
}
