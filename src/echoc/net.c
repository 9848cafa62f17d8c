/* echoc's network set-up: getaddrinfo, non-blocking connect with a timeout, connected UDP sockets,
 * endpoint lookup. */
#include "echoc/net.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "shared/macro.h"
#include "shared/timeutil.h"

int net_resolve(const char *host, const char *port, int family, bool udp, Target *ret, int *ret_gai) {
        struct addrinfo hints = {
                .ai_family = family,
                .ai_socktype = udp ? SOCK_DGRAM : SOCK_STREAM,
                .ai_protocol = udp ? IPPROTO_UDP : IPPROTO_TCP,
        };
        struct addrinfo *res = NULL;
        int r;

        *ret_gai = 0;
        ret->host = host;
        ret->port = port;
        ret->n_addrs = 0;

        r = getaddrinfo(host, port, &hints, &res);
        if (r != 0) {
                *ret_gai = r;
                return r == EAI_SYSTEM ? negative_errno() : -EHOSTUNREACH;
        }
        for (struct addrinfo *ai = res; ai && ret->n_addrs < TARGET_ADDRS_MAX; ai = ai->ai_next) {
                IpAddr a;

                if (ipaddr_from_sockaddr(ai->ai_addr, ai->ai_addrlen, &a) < 0)
                        continue;
                /* getaddrinfo may list an address twice (e.g. /etc/hosts and DNS) */
                bool dup = false;
                for (size_t i = 0; i < ret->n_addrs; i++)
                        dup = dup || ipaddr_equal(&ret->addrs[i], &a);
                if (!dup)
                        ret->addrs[ret->n_addrs++] = a;
        }
        freeaddrinfo(res);
        if (ret->n_addrs == 0) {
                *ret_gai = EAI_ADDRFAMILY;
                return -EHOSTUNREACH;
        }
        return 0;
}

int net_wait(int fd, short events, uint64_t deadline) {
        struct pollfd p = { .fd = fd, .events = events };
        int timeout = -1;

        if (deadline > 0) {
                uint64_t now = now_usec();
                timeout = now >= deadline ? 0 : (int) MIN((deadline - now + 999) / 1000, (uint64_t) INT32_MAX);
        }
        int r = poll(&p, 1, timeout);
        if (r < 0)
                return negative_errno();
        return r == 0 ? 0 : p.revents;
}

int net_connect_start(const IpAddr *a) {
        _cleanup_(closep) int fd = -1;
        SockAddr sa;
        socklen_t len = ipaddr_to_sockaddr(a, &sa);
        int one = 1;

        fd = socket(a->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
        if (fd < 0)
                return negative_errno();
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, &sa.sa, len) < 0 && errno != EINPROGRESS)
                return negative_errno();
        return TAKE_FD(fd);
}

int net_udp_connect(const IpAddr *a) {
        _cleanup_(closep) int fd = -1;
        SockAddr sa;
        socklen_t len = ipaddr_to_sockaddr(a, &sa);

        fd = socket(a->family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP);
        if (fd < 0)
                return negative_errno();
        if (connect(fd, &sa.sa, len) < 0)
                return negative_errno();
        return TAKE_FD(fd);
}

int net_connect_result(int fd) {
        int err = 0;
        socklen_t len = sizeof(err);

        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                return negative_errno();
        return -err;
}

int net_connect(const IpAddr *a, uint64_t timeout_usec) {
        _cleanup_(closep) int fd = -1;
        uint64_t deadline = timeout_usec > 0 ? now_usec() + timeout_usec : 0;
        int r;

        fd = net_connect_start(a);
        if (fd < 0)
                return fd;
        r = net_wait(fd, POLLOUT, deadline);
        if (r < 0)
                return r;
        if (r == 0)
                return -ETIMEDOUT;
        r = net_connect_result(fd);
        if (r < 0)
                return r;
        return TAKE_FD(fd);
}

int net_endpoints(int fd, IpAddr *ret_local, IpAddr *ret_remote) {
        SockAddr sa;
        socklen_t len;
        int r;

        if (ret_local) {
                len = sizeof(sa);
                if (getsockname(fd, &sa.sa, &len) < 0)
                        return negative_errno();
                r = ipaddr_from_sockaddr(&sa.sa, len, ret_local);
                if (r < 0)
                        return r;
        }
        if (ret_remote) {
                len = sizeof(sa);
                if (getpeername(fd, &sa.sa, &len) < 0)
                        return negative_errno();
                r = ipaddr_from_sockaddr(&sa.sa, len, ret_remote);
                if (r < 0)
                        return r;
        }
        return 0;
}

int net_send_all(int fd, const void *buf, size_t len, uint64_t timeout_usec) {
        uint64_t deadline = timeout_usec > 0 ? now_usec() + timeout_usec : 0;
        const uint8_t *p = buf;

        while (len > 0) {
                ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                return negative_errno();
                        int r = net_wait(fd, POLLOUT, deadline);
                        if (r < 0)
                                return r;
                        if (r == 0)
                                return -ETIMEDOUT;
                        continue;
                }
                p += n;
                len -= (size_t) n;
        }
        return 0;
}
