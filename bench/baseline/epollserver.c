/* A single-process epoll echo server: the ceiling of any design on this host, kept beside the
 * textbook fork server as the other end of the benchmark's scale.
 *
 * One process, no fork: a non-blocking listener and level-triggered epoll; accept4() in a loop
 * until EAGAIN; each connection has its own buffer. Every byte read is written back; while a
 * write is short the connection stops reading (waits for EPOLLOUT only) until the rest is out.
 * The peer's EOF is read only once nothing is pending (so pending data is always flushed first),
 * then shutdown(SHUT_WR), then close. Nothing else:
 * no limits, no timeouts, no logging. Deliberately not in echod's house style.
 *
 * usage: epollserver ADDR PORT */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSIZE 65536
#define LISTENQ 1024
#define EVENTS 256

struct conn {
        int fd;
        size_t off;    /* buf[off..len) is read but not yet written back */
        size_t len;
        char buf[BUFSIZE];
};

static int ep;

static void conn_close(struct conn *c) {
        close(c->fd); /* also removes it from the epoll set */
        free(c);
}

static void conn_wait(struct conn *c, unsigned events) {
        struct epoll_event ev = { .events = events, .data.ptr = c };

        if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
                conn_close(c);
}

/* Write out buf[off..len); 1 when all of it is out, 0 when the socket is full, -1 on error. */
static int flush(struct conn *c) {
        while (c->off < c->len) {
                ssize_t w = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        return errno == EAGAIN ? 0 : -1;
                }
                c->off += (size_t) w;
        }
        c->off = c->len = 0;
        return 1;
}

/* A connection is either reading (EPOLLIN) or, with an echo pending, writing (EPOLLOUT only): it
 * reads nothing more until what it read is out, so the peer's EOF is seen only with nothing
 * pending, and then ends the connection at once. */
static void on_event(struct conn *c) {
        if (c->len > c->off) { /* room to write (or an error) */
                int r = flush(c);
                if (r < 0)
                        conn_close(c);
                else if (r > 0)
                        conn_wait(c, EPOLLIN);
                return;
        }
        ssize_t n = recv(c->fd, c->buf, sizeof(c->buf), 0);
        if (n < 0) {
                if (errno != EAGAIN && errno != EINTR)
                        conn_close(c);
                return;
        }
        if (n == 0) { /* EOF, nothing pending: the echo is complete */
                shutdown(c->fd, SHUT_WR);
                conn_close(c);
                return;
        }
        c->len = (size_t) n;
        int r = flush(c);
        if (r < 0)
                conn_close(c);
        else if (r == 0)
                conn_wait(c, EPOLLOUT); /* stop reading until the echo is out */
}

static void on_accept(int lfd) {
        for (;;) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        if (errno != EAGAIN)
                                perror("epollserver: accept4"); /* EMFILE: the next event retries */
                        return;
                }
                struct conn *c = malloc(sizeof(*c));
                if (!c) {
                        close(fd);
                        continue;
                }
                c->fd = fd;
                c->off = c->len = 0;
                struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
                        conn_close(c);
        }
}

int main(int argc, char **argv) {
        struct sockaddr_in addr = { .sin_family = AF_INET };
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL }, events[EVENTS];
        struct rlimit rl;
        int lfd, on = 1;

        if (argc < 3 || inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
                fprintf(stderr, "usage: epollserver ADDR PORT\n");
                return 2;
        }
        addr.sin_port = htons((uint16_t) atoi(argv[2]));
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max; /* one fd per connection */
                setrlimit(RLIMIT_NOFILE, &rl);
        }
        signal(SIGPIPE, SIG_IGN);

        lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 ||
            bind(lfd, (struct sockaddr *) &addr, sizeof(addr)) < 0 || listen(lfd, LISTENQ) < 0) {
                perror("epollserver: listen");
                return 1;
        }
        ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
                perror("epollserver: epoll");
                return 1;
        }
        for (;;) {
                int n = epoll_wait(ep, events, EVENTS, -1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        perror("epollserver: epoll_wait");
                        return 1;
                }
                for (int i = 0; i < n; i++) {
                        if (events[i].data.ptr == NULL)
                                on_accept(lfd);
                        else
                                on_event(events[i].data.ptr);
                }
        }
}
