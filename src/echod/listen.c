/* Listening sockets: bind configured addresses, adopt systemd-activated ones, diff on reload. */
#include "echod/listen.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>

#include "shared/io.h"
#include "shared/macro.h"

Listener *listener_free(Listener *l) {
        if (!l)
                return NULL;
        sd_event_source_disable_unref(l->source);
        safe_close(l->fd);
        free(l);
        return NULL;
}

static int listener_new(int fd, const IpAddr *configured, bool activated, Listener **ret) {
        Listener *l = calloc(1, sizeof(Listener));
        SockAddr sa;
        socklen_t len = sizeof(sa);

        if (!l)
                return -ENOMEM;
        l->fd = fd;
        l->activated = activated;
        if (getsockname(fd, &sa.sa, &len) < 0 || ipaddr_from_sockaddr(&sa.sa, len, &l->bound) < 0) {
                int r = errno > 0 ? -errno : -EAFNOSUPPORT;
                l->fd = -1;
                free(l);
                return r;
        }
        l->configured = configured ? *configured : l->bound;
        *ret = l;
        return 0;
}

/* Every datagram comes with the address it was sent to, which its answer is sent from (and which
 * tells a broadcast from a unicast): IP_PKTINFO for IPv4, also on a dual-stack IPv6 socket. */
static int datagram_options(int fd, int family) {
        const int one = 1, queue = LISTENER_UDP_RCVBUF;

        /* room for a burst while the worker is busy, or replaced: the default (net.core.rmem_default,
         * ~200 KiB) holds about 250 small datagrams. Forced while echod may still be root; else capped
         * by net.core.rmem_max. Best effort. */
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &queue, sizeof(queue)) < 0)
                (void) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &queue, sizeof(queue));

        if (setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one)) < 0 && family == AF_INET)
                return negative_errno();
        if (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one)) < 0)
                return negative_errno();
        return 0;
}

int listener_bind(const IpAddr *addr, bool datagram, unsigned backlog, Listener **ret) {
        _cleanup_(closep) int fd = -1;
        const int one = 1;
        SockAddr sa;
        socklen_t len = ipaddr_to_sockaddr(addr, &sa);
        int r;

        fd = socket(addr->family, (datagram ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    datagram ? IPPROTO_UDP : IPPROTO_TCP);
        if (fd < 0)
                return negative_errno();
        if (!datagram && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
                return negative_errno();
        /* so that 0.0.0.0:P and [::]:P can both be bound */
        if (addr->family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
                return negative_errno();
        if (datagram && (r = datagram_options(fd, addr->family)) < 0)
                return r;
        if (bind(fd, &sa.sa, len) < 0)
                return negative_errno();
        if (!datagram && listen(fd, (int) backlog) < 0)
                return negative_errno();
        r = listener_new(fd, addr, false, ret);
        if (r < 0)
                return r;
        (*ret)->datagram = datagram;
        TAKE_FD(fd);
        return 0;
}

int listeners_adopt(Listener ***ret, unsigned *ret_rejected) {
        char **names = NULL;
        Listener **list = NULL;
        unsigned n_ok = 0, rejected = 0;
        int n, r = 0;

        n = sd_listen_fds_with_names(1, &names);
        if (n <= 0) {
                *ret = NULL;
                *ret_rejected = 0;
                return n;
        }
        list = calloc((size_t) n, sizeof(Listener *));
        if (!list)
                r = -ENOMEM;
        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i;
                bool datagram = r >= 0 && sd_is_socket_inet(fd, AF_UNSPEC, SOCK_DGRAM, -1, 0) > 0;
                if (r < 0 || (!datagram && sd_is_socket_inet(fd, AF_UNSPEC, SOCK_STREAM, 1, 0) <= 0) ||
                    fd_set_nonblock(fd, 1) < 0) {
                        safe_close(fd);
                        rejected++;
                        continue;
                }
                int k = listener_new(fd, NULL, true, &list[n_ok]);
                if (k >= 0 && datagram && datagram_options(fd, list[n_ok]->bound.family) < 0)
                        k = -EINVAL;
                if (k < 0) {
                        if (list[n_ok])
                                list[n_ok] = listener_free(list[n_ok]);
                        else
                                safe_close(fd);
                        rejected++;
                        continue;
                }
                list[n_ok++]->datagram = datagram;
        }
        if (names)
                for (int i = 0; i < n; i++)
                        free(names[i]);
        free(names);
        if (r < 0) {
                free(list);
                return r;
        }
        *ret = list;
        *ret_rejected = rejected;
        return (int) n_ok;
}

static int plan_new(unsigned n, unsigned backlog, ListenerPlan *ret) {
        ListenerPlan p = { .n = n, .backlog = backlog };

        p.list = calloc(n ? n : 1, sizeof(Listener *));
        p.proxy = calloc(n ? n : 1, sizeof(bool));
        p.fresh = calloc(n ? n : 1, sizeof(bool));
        if (!p.list || !p.proxy || !p.fresh) {
                listeners_abort(&p);
                return -ENOMEM;
        }
        *ret = p;
        return 0;
}

int listeners_prepare(Listener *const *old, unsigned n_old, const ListenAddr *addrs, unsigned n, unsigned backlog,
                      ListenerPlan *ret) {
        ListenerPlan p;
        int r = plan_new(n, backlog, &p);

        if (r < 0)
                return r;
        for (unsigned i = 0; i < n; i++) {
                p.proxy[i] = addrs[i].proxy;
                for (unsigned j = 0; j < n_old && !p.list[i]; j++)
                        if (!old[j]->activated && old[j]->datagram == addrs[i].datagram &&
                            ipaddr_equal(&old[j]->configured, &addrs[i].addr))
                                p.list[i] = old[j];
                if (p.list[i])
                        continue;
                r = listener_bind(&addrs[i].addr, addrs[i].datagram, backlog, &p.list[i]);
                if (r < 0) {
                        ret->failed = addrs[i].addr;
                        listeners_abort(&p);
                        return r;
                }
                p.fresh[i] = true;
        }
        p.failed = (IpAddr) { 0 };
        *ret = p;
        return 0;
}

int listeners_prepare_activated(Listener *const *old, unsigned n_old, bool proxy, ListenerPlan *ret) {
        ListenerPlan p;
        int r = plan_new(n_old, 0, &p);

        if (r < 0)
                return r;
        for (unsigned i = 0; i < n_old; i++) {
                p.list[i] = old[i];
                p.proxy[i] = proxy;
        }
        *ret = p;
        return 0;
}

void listeners_abort(ListenerPlan *p) {
        for (unsigned i = 0; i < p->n && p->list; i++)
                if (p->fresh && p->fresh[i])
                        listener_free(p->list[i]);
        free(p->list);
        free(p->proxy);
        free(p->fresh);
        *p = (ListenerPlan) { 0 };
}

Listener **listeners_commit(Listener **old, unsigned n_old, ListenerPlan *p) {
        Listener **list = p->list;

        for (unsigned j = 0; j < n_old; j++) {
                bool kept = false;
                for (unsigned i = 0; i < p->n && !kept; i++)
                        kept = list[i] == old[j];
                if (!kept)
                        listener_free(old[j]);
        }
        for (unsigned i = 0; i < p->n; i++) {
                list[i]->proxy = p->proxy[i];
                if (!p->fresh[i] && !list[i]->activated && !list[i]->datagram && p->backlog > 0)
                        (void) listen(list[i]->fd, (int) p->backlog); /* a new backlog, in place */
        }
        free(old);
        free(p->proxy);
        free(p->fresh);
        *p = (ListenerPlan) { 0 };
        return list;
}

int listeners_split(Listener ***list, unsigned n, Listener ***ret_stream, unsigned *ret_n_stream,
                    Listener ***ret_datagram, unsigned *ret_n_datagram) {
        Listener **stream = calloc(n ? n : 1, sizeof(Listener *));
        Listener **datagram = calloc(n ? n : 1, sizeof(Listener *));
        unsigned ns = 0, nd = 0;

        if (!stream || !datagram) {
                free(stream);
                free(datagram);
                return -ENOMEM;
        }
        for (unsigned i = 0; i < n; i++) {
                if ((*list)[i]->datagram)
                        datagram[nd++] = (*list)[i];
                else
                        stream[ns++] = (*list)[i];
        }
        free(*list);
        *list = NULL;
        *ret_stream = stream;
        *ret_n_stream = ns;
        *ret_datagram = datagram;
        *ret_n_datagram = nd;
        return 0;
}
