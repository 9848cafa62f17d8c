/* holdcli: open N TCP connections from several loopback source addresses, hold them, echo on
 * every one, close them: the client of bench/hold.
 *
 *   cc -O2 -o holdcli bench/tools/holdcli.c
 *   holdcli HOST PORT N SOURCES [WINDOW [TIMEOUT_S [FIRST]]]
 *
 * SOURCES addresses from 127.0.0.(2 + FIRST) up (FIRST 0 by default: several clients side by side
 * use addresses of their own) (bind() before connect(), with IP_BIND_ADDRESS_NO_PORT so
 * the port is chosen at connect() for the whole 4-tuple: about 28,000 connections per address with
 * the default ip_local_port_range). One epoll loop, at most WINDOW connections in progress at a time.
 *
 * Phases, each started by a line on stdin (so the driver can measure between them), each reporting
 * one JSON line on stdout:
 *   "open":  connect, send 12 unique bytes, read them back (so every connection has reached a
 *            live server process), keep it;      {"phase":"open","ok":N,"failed":F,"seconds":S}
 *   "echo":  on every held connection, send 12 other unique bytes and read them back, compared;
 *                                                 {"phase":"echo","ok":N,"failed":F,"seconds":S}
 *   "close": close every connection;              {"phase":"close","closed":N,"seconds":S}
 * A phase ends when every connection is done or failed, or after TIMEOUT_S (default 600): what
 * was still in progress then counts as failed. Not echod's house style: a benchmark tool. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MSG_LEN 12

enum { S_IDLE, S_CONNECTING, S_WAITING, S_HELD, S_FAILED, S_CLOSED };

typedef struct Conn {
        int fd;
        uint8_t state;
        uint8_t got;
} Conn;

static Conn *conns;
static unsigned n_conns, n_sources, window, first_source;
static struct sockaddr_in server;
static int ep;
static double timeout_s = 600;

static double now(void) {
        struct timespec t;

        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double) t.tv_sec + (double) t.tv_nsec / 1e9;
}

/* the bytes connection i sends in phase p: unique per connection and phase */
static void message(unsigned i, char p, char out[MSG_LEN]) {
        char buf[MSG_LEN + 1];

        snprintf(buf, sizeof(buf), "%c%010u\n", p, i);
        memcpy(out, buf, MSG_LEN);
}

static int start_connect(unsigned i) {
        struct sockaddr_in src = { .sin_family = AF_INET };
        unsigned per = (n_conns + n_sources - 1) / n_sources;
        int one = 1, fd;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        src.sin_addr.s_addr = htonl(0x7f000002u + first_source + i / per);
        (void) setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *) &src, sizeof(src)) < 0 ||
            (connect(fd, (struct sockaddr *) &server, sizeof(server)) < 0 && errno != EINPROGRESS)) {
                int r = -errno;
                close(fd);
                return r;
        }
        struct epoll_event ev = { .events = EPOLLOUT, .data.u32 = i };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        conns[i] = (Conn) { .fd = fd, .state = S_CONNECTING };
        return 0;
}

static void fail(unsigned i, unsigned *inflight, unsigned *failed) {
        (void) epoll_ctl(ep, EPOLL_CTL_DEL, conns[i].fd, NULL);
        conns[i].state = S_FAILED;
        (*inflight)--;
        (*failed)++;
}

static int send_message(unsigned i, char phase) {
        char m[MSG_LEN];

        message(i, phase, m);
        conns[i].got = 0;
        return send(conns[i].fd, m, MSG_LEN, MSG_NOSIGNAL) == MSG_LEN ? 0 : -1;
}

/* phase 'o' (open) or 'e' (echo) */
static void run_phase(char phase) {
        struct epoll_event evs[256];
        unsigned next = 0, inflight = 0, ok = 0, failed = 0;
        double t0 = now(), deadline = t0 + timeout_s;
        bool timed_out = false;

        for (;;) {
                /* start more, up to the window */
                while (inflight < window && next < n_conns) {
                        unsigned i = next++;
                        if (phase == 'o') {
                                if (start_connect(i) < 0) {
                                        conns[i].state = S_FAILED;
                                        conns[i].fd = -1;
                                        failed++;
                                        continue;
                                }
                        } else {
                                if (conns[i].state != S_HELD)
                                        continue; /* failed before: counted as failed again below */
                                struct epoll_event ev = { .events = EPOLLIN, .data.u32 = i };
                                conns[i].state = S_WAITING;
                                if (epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev) < 0 || send_message(i, phase) < 0) {
                                        inflight++;
                                        fail(i, &inflight, &failed);
                                        continue;
                                }
                        }
                        inflight++;
                }
                if (inflight == 0 && next >= n_conns)
                        break;
                if (now() > deadline) {
                        timed_out = true;
                        break;
                }
                int n = epoll_wait(ep, evs, 256, 1000);
                if (n < 0 && errno != EINTR) {
                        perror("epoll_wait");
                        exit(1);
                }
                for (int k = 0; k < n; k++) {
                        unsigned i = evs[k].data.u32;
                        Conn *c = &conns[i];
                        if (c->state == S_CONNECTING) {
                                int err = 0;
                                socklen_t len = sizeof(err);
                                struct epoll_event ev = { .events = EPOLLIN, .data.u32 = i };
                                if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0 ||
                                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0 || send_message(i, phase) < 0) {
                                        fail(i, &inflight, &failed);
                                        continue;
                                }
                                c->state = S_WAITING;
                        } else if (c->state == S_WAITING) {
                                char want[MSG_LEN], buf[MSG_LEN];
                                ssize_t r = recv(c->fd, buf, MSG_LEN - c->got, 0);
                                if (r < 0 && (errno == EAGAIN || errno == EINTR))
                                        continue;
                                message(i, phase, want);
                                if (r <= 0 || memcmp(buf, want + c->got, (size_t) r) != 0) {
                                        fail(i, &inflight, &failed);
                                        continue;
                                }
                                c->got += (uint8_t) r;
                                if (c->got == MSG_LEN) {
                                        (void) epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                                        c->state = S_HELD;
                                        inflight--;
                                        ok++;
                                }
                        }
                }
        }
        if (timed_out)
                for (unsigned i = 0; i < next; i++)
                        if (conns[i].state == S_CONNECTING || conns[i].state == S_WAITING)
                                fail(i, &inflight, &failed);
        failed = n_conns - ok; /* with those that failed in an earlier phase */
        printf("{\"phase\":\"%s\",\"ok\":%u,\"failed\":%u,\"seconds\":%.3f,\"timed_out\":%s}\n",
               phase == 'o' ? "open" : "echo", ok, failed, now() - t0, timed_out ? "true" : "false");
        fflush(stdout);
}

static void close_all(void) {
        double t0 = now();
        unsigned closed = 0;

        for (unsigned i = 0; i < n_conns; i++)
                if (conns[i].state != S_IDLE && conns[i].fd >= 0) {
                        close(conns[i].fd);
                        conns[i].state = S_CLOSED;
                        conns[i].fd = -1;
                        closed++;
                }
        printf("{\"phase\":\"close\",\"closed\":%u,\"seconds\":%.3f}\n", closed, now() - t0);
        fflush(stdout);
}

int main(int argc, char *argv[]) {
        char line[64];

        if (argc < 5) {
                fprintf(stderr, "usage: holdcli HOST PORT N SOURCES [WINDOW [TIMEOUT_S [FIRST]]]\n");
                return 2;
        }
        server.sin_family = AF_INET;
        server.sin_port = htons((uint16_t) atoi(argv[2]));
        if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1) {
                fprintf(stderr, "holdcli: %s is not an IPv4 address\n", argv[1]);
                return 2;
        }
        n_conns = (unsigned) strtoul(argv[3], NULL, 10);
        n_sources = (unsigned) strtoul(argv[4], NULL, 10);
        window = argc > 5 ? (unsigned) strtoul(argv[5], NULL, 10) : 256;
        if (argc > 6)
                timeout_s = atof(argv[6]);
        if (argc > 7)
                first_source = (unsigned) strtoul(argv[7], NULL, 10);
        if (n_conns == 0 || n_sources == 0 || first_source + n_sources > 250 || window == 0) {
                fprintf(stderr, "holdcli: bad arguments\n");
                return 2;
        }
        conns = calloc(n_conns, sizeof(Conn));
        ep = epoll_create1(EPOLL_CLOEXEC);
        if (!conns || ep < 0) {
                perror("holdcli");
                return 1;
        }
        for (unsigned i = 0; i < n_conns; i++)
                conns[i].fd = -1;
        printf("{\"phase\":\"ready\"}\n");
        fflush(stdout);
        while (fgets(line, sizeof(line), stdin)) {
                if (strncmp(line, "open", 4) == 0)
                        run_phase('o');
                else if (strncmp(line, "echo", 4) == 0)
                        run_phase('e');
                else if (strncmp(line, "close", 5) == 0)
                        close_all();
                else if (strncmp(line, "quit", 4) == 0)
                        break;
        }
        return 0;
}
