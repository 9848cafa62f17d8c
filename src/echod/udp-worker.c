/* The UDP worker: one long-lived process per UDP socket, forked by an echod-spawner that runs the
 * datagram sandbox (sandbox.c), answering datagrams in batches until the master closes its
 * control channel (udp-proto.h).
 *
 * Each wakeup reads up to BATCH datagrams with one recvmmsg(), judges each (udp-policy.c: nothing
 * is answered before every check passed), and sends the answers with one sendmmsg(): the payload
 * as received, byte for byte and never more, to the source, from the very address the datagram
 * was sent to (IP_PKTINFO / IPV6_PKTINFO), so a host with several addresses answers from the one
 * asked. Consecutive answers to one peer go as one GSO send (UDP_SEGMENT): still one datagram
 * each on the wire, but one trip through the stack. It never logs: the master logs summaries of the counters it is sent. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echod/udp-policy.h"
#include "echod/udp-proto.h"
#include "echod/worker.h"
#include "shared/io.h"
#include "shared/macro.h"

#define BATCH 32
/* batches per wakeup before the control channel is looked at again */
#define BATCHES_PER_WAKEUP 16
/* the largest UDP payload (over IPv4); received whole, so nothing is ever cut short */
#define DGRAM_MAX 65536
/* a GSO send's limits (the kernel's UDP_MAX_SEGMENTS, and an IP datagram's size) */
#define GSO_SEGMENTS_MAX 64
#define GSO_BYTES_MAX 60000
/* Fewer answers than this to one peer go one by one: a group reaches the peer all at once, so a
 * client with a few datagrams in flight would take turns with the worker instead of overlapping
 * with it (bench/FINDINGS.md: with 8 in flight, groups halved the rate); only a deep batch, which
 * comes when a client keeps many in flight, gains from one trip through the stack. */
#define GSO_SEGMENTS_MIN 16

typedef struct PktInfo {
        _Alignas(struct cmsghdr) char buf[CMSG_SPACE(sizeof(struct in6_pktinfo)) +
                                          CMSG_SPACE(sizeof(struct in_pktinfo))];
} PktInfo;

/* an answer's address, and a group's segment size */
typedef struct GroupCtl {
        _Alignas(struct cmsghdr) char buf[sizeof(PktInfo) + CMSG_SPACE(sizeof(uint16_t))];
} GroupCtl;

typedef struct Batch {
        struct mmsghdr in[BATCH], out[BATCH], groups[BATCH];
        struct iovec iov_in[BATCH], iov_out[BATCH];
        SockAddr from[BATCH];
        PktInfo cin[BATCH], cout[BATCH];
        GroupCtl gctl[BATCH];
        unsigned first[BATCH], count[BATCH]; /* each group's answers in out[] */
        uint8_t *buf; /* BATCH × DGRAM_MAX */
} Batch;

/* A policy being received: the POLICY message, then its addresses. */
typedef struct Pending {
        bool active;
        UdpPolicyMsg msg;
        IpAddr *addrs;
        uint8_t *kinds;
        unsigned n;
} Pending;

static UdpCounters counters = { .type = UDP_MSG_COUNTERS };
static UdpPolicy *policy;
static Pending pending;
static Batch batch;

static void pending_clear(void) {
        free(pending.addrs);
        free(pending.kinds);
        pending = (Pending) { 0 };
}

static int split(UdpAddrKind kind, CidrList *ret) {
        ret->items = calloc(pending.n ? pending.n : 1, sizeof(IpAddr));
        ret->n = 0;
        if (!ret->items)
                return -ENOMEM;
        for (unsigned i = 0; i < pending.n; i++)
                if (pending.kinds[i] == kind)
                        ret->items[ret->n++] = pending.addrs[i];
        return 0;
}

/* The policy received is complete: build it, and only then replace the one in force. */
static int apply_pending(uint32_t generation) {
        CidrList allow = { 0 }, deny = { 0 }, broadcast = { 0 };
        UdpPolicy *p = NULL;
        int r;

        if (!pending.active || pending.n != pending.msg.n_addrs || generation != pending.msg.generation)
                return -EBADMSG;
        r = split(UDP_ADDR_ALLOW, &allow);
        if (r >= 0)
                r = split(UDP_ADDR_DENY, &deny);
        if (r >= 0)
                r = split(UDP_ADDR_BROADCAST, &broadcast);
        if (r >= 0)
                r = udp_policy_new(&pending.msg.limits, &allow, &deny, &broadcast, &p);
        free(allow.items);
        free(deny.items);
        free(broadcast.items);
        if (r < 0)
                return r;
        udp_policy_free(policy);
        policy = p;
        counters.generation = generation;
        pending_clear();
        return 0;
}

/* One control message. Returns 0, 1 if a policy was applied, or -errno (the worker exits). */
static int handle_message(const UdpMsg *m, size_t len) {
        if (m->type == UDP_MSG_POLICY && len == sizeof(UdpPolicyMsg)) {
                pending_clear();
                pending.msg = m->policy;
                if (m->policy.n_addrs > 0) {
                        pending.addrs = calloc(m->policy.n_addrs, sizeof(IpAddr));
                        pending.kinds = calloc(m->policy.n_addrs, 1);
                        if (!pending.addrs || !pending.kinds)
                                return -ENOMEM;
                }
                pending.active = true;
                return 0;
        }
        if (m->type == UDP_MSG_ADDRS && len == sizeof(UdpAddrsMsg) && pending.active &&
            m->addrs.n <= UDP_ADDRS_PER_MSG && m->addrs.n <= pending.msg.n_addrs - pending.n) {
                memcpy(pending.addrs + pending.n, m->addrs.addrs, m->addrs.n * sizeof(IpAddr));
                memcpy(pending.kinds + pending.n, m->addrs.kind, m->addrs.n);
                pending.n += m->addrs.n;
                return 0;
        }
        if (m->type == UDP_MSG_COMMIT && len == sizeof(UdpCommitMsg)) {
                int r = apply_pending(m->commit.generation);
                return r < 0 ? r : 1;
        }
        return -EBADMSG;
}

/* Read what the master sent. Returns 0, 1 when the channel ended, or -errno. */
static int read_control(int ctl, bool wait) {
        static UdpMsg m;

        for (;;) {
                ssize_t n = recv(ctl, &m, sizeof(m), wait ? 0 : MSG_DONTWAIT);
                if (n == 0)
                        return 1;
                if (n < 0)
                        return errno == EAGAIN ? 0 : errno == EINTR ? 0 : 1;
                int r = handle_message(&m, (size_t) n);
                if (r < 0)
                        return r;
                if (r > 0 && wait)
                        return 0; /* the first policy is in force: serve */
        }
}

/* The first message: the socket to serve. */
static int receive_socket(int ctl) {
        UdpSocketMsg m;
        int fd;

        ssize_t n = recv_with_fd(ctl, &m, sizeof(m), 0, &fd);
        if (n < 0)
                return (int) n;
        if (n != sizeof(m) || m.type != UDP_MSG_SOCKET || fd < 0) {
                safe_close(fd);
                return -EBADMSG;
        }
        return fd;
}

/* Where datagram i was sent: its destination address and interface, from the kernel. */
static int destination(struct msghdr *mh, IpAddr *ret, bool *ret_not_local, int *ret_ifindex) {
        for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
                if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
                        struct in_pktinfo pi;
                        memcpy(&pi, CMSG_DATA(c), sizeof(pi));
                        *ret = (IpAddr) { .family = AF_INET, .prefixlen = 32 };
                        memcpy(ret->bytes, &pi.ipi_addr, 4);
                        /* the kernel's answer address: the header's own destination for a
                         * datagram to one of our unicast addresses, another for a broadcast */
                        *ret_not_local = pi.ipi_spec_dst.s_addr != 0 && pi.ipi_spec_dst.s_addr != pi.ipi_addr.s_addr;
                        *ret_ifindex = pi.ipi_ifindex;
                        return 0;
                }
                if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
                        struct in6_pktinfo pi;
                        struct sockaddr_in6 sa = { .sin6_family = AF_INET6 };
                        memcpy(&pi, CMSG_DATA(c), sizeof(pi));
                        sa.sin6_addr = pi.ipi6_addr;
                        if (ipaddr_from_sockaddr((struct sockaddr *) &sa, sizeof(sa), ret) < 0)
                                return -EAFNOSUPPORT;
                        *ret_not_local = false;
                        *ret_ifindex = (int) pi.ipi6_ifindex;
                        return 0;
                }
        }
        return -ENOENT;
}

/* The answer's source: the address the datagram was sent to. */
static socklen_t answer_from(PktInfo *c, const IpAddr *dst, int ifindex) {
        struct cmsghdr *h = (struct cmsghdr *) c->buf;

        memset(c, 0, sizeof(*c));
        if (dst->family == AF_INET) {
                struct in_pktinfo pi = { 0 };
                memcpy(&pi.ipi_spec_dst, dst->bytes, 4);
                h->cmsg_level = IPPROTO_IP;
                h->cmsg_type = IP_PKTINFO;
                h->cmsg_len = CMSG_LEN(sizeof(pi));
                memcpy(CMSG_DATA(h), &pi, sizeof(pi));
                return CMSG_SPACE(sizeof(pi));
        }
        struct in6_pktinfo pi = { 0 };
        memcpy(&pi.ipi6_addr, dst->bytes, 16);
        /* a link-local address names an interface only together with it */
        if (dst->bytes[0] == 0xfe && (dst->bytes[1] & 0xc0) == 0x80)
                pi.ipi6_ifindex = (unsigned) ifindex;
        h->cmsg_level = IPPROTO_IPV6;
        h->cmsg_type = IPV6_PKTINFO;
        h->cmsg_len = CMSG_LEN(sizeof(pi));
        memcpy(CMSG_DATA(h), &pi, sizeof(pi));
        return CMSG_SPACE(sizeof(pi));
}

static void prepare_receive(void) {
        for (unsigned i = 0; i < BATCH; i++) {
                batch.iov_in[i] = (struct iovec) { .iov_base = batch.buf + (size_t) i * DGRAM_MAX, .iov_len = DGRAM_MAX };
                batch.in[i].msg_hdr = (struct msghdr) { .msg_name = &batch.from[i], .msg_namelen = sizeof(SockAddr),
                                                        .msg_iov = &batch.iov_in[i], .msg_iovlen = 1,
                                                        .msg_control = &batch.cin[i],
                                                        .msg_controllen = sizeof(PktInfo) };
        }
}

/* Judge datagram i; on a yes, add its answer to the batch out. Returns 1 if added. */
static int judge(unsigned i, unsigned m, uint64_t now) {
        struct msghdr *mh = &batch.in[i].msg_hdr;
        size_t len = batch.in[i].msg_len;
        IpAddr src, dst;
        bool not_local = false;
        int ifindex = 0, r;

        counters.received++;
        counters.bytes_in += len;
        if ((mh->msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || ipaddr_from_sockaddr(&batch.from[i].sa, mh->msg_namelen, &src) < 0)
                r = UDP_DROP_TOO_LARGE;
        else if (destination(mh, &dst, &not_local, &ifindex) < 0)
                r = UDP_DROP_BAD_DESTINATION; /* no word from the kernel on where it was sent */
        else
                r = udp_policy_judge(policy, &src, &dst, not_local, len, now);
        if (r >= 0) {
                counters.dropped[r]++;
                return 0;
        }
        batch.iov_out[m] = (struct iovec) { .iov_base = batch.iov_in[i].iov_base, .iov_len = len };
        batch.out[m].msg_hdr = (struct msghdr) { .msg_name = &batch.from[i], .msg_namelen = mh->msg_namelen,
                                                 .msg_iov = &batch.iov_out[m], .msg_iovlen = 1,
                                                 .msg_control = &batch.cout[m] };
        batch.out[m].msg_hdr.msg_controllen = answer_from(&batch.cout[m], &dst, ifindex);
        return 1;
}

/* Send answers [from, to) of batch.out one by one: the first that fails is counted and skipped,
 * the rest go on. */
static void send_each(int sock, unsigned from, unsigned to) {
        while (from < to) {
                int k = sendmmsg(sock, batch.out + from, to - from, MSG_DONTWAIT);
                if (k <= 0) {
                        /* an unreachable route, a full buffer, a broadcast route (no SO_BROADCAST) */
                        counters.dropped[UDP_DROP_SEND_FAILED]++;
                        from++;
                        continue;
                }
                for (unsigned j = from; j < from + (unsigned) k; j++) {
                        counters.replied++;
                        counters.bytes_out += batch.out[j].msg_len;
                }
                from += (unsigned) k;
        }
}

/* Answers [i, j) go to one peer from one address, all of one size but the last, which may be
 * shorter: one UDP_SEGMENT (GSO) send, one trip through the stack for all of them. */
static unsigned group_end(unsigned i, unsigned m) {
        const struct msghdr *a = &batch.out[i].msg_hdr;
        size_t size = batch.iov_out[i].iov_len, total = size;
        unsigned j = i + 1;

        if (size == 0)
                return j;
        for (; j < m && j - i < GSO_SEGMENTS_MAX; j++) {
                const struct msghdr *b = &batch.out[j].msg_hdr;
                size_t len = batch.iov_out[j].iov_len;
                if (len == 0 || len > size || total + len > GSO_BYTES_MAX || b->msg_namelen != a->msg_namelen ||
                    memcmp(b->msg_name, a->msg_name, a->msg_namelen) != 0 || b->msg_controllen != a->msg_controllen ||
                    memcmp(b->msg_control, a->msg_control, a->msg_controllen) != 0)
                        break;
                total += len;
                if (len < size)
                        return j + 1; /* a shorter one ends the group */
        }
        return j;
}

/* Send answers [0, m): grouped where they can be (udp(7), UDP_SEGMENT), one by one otherwise. A
 * kernel or route that refuses a group (no GSO, a path that would fragment it) gets its answers
 * one by one, and no more groups from this worker. */
static void send_answers(int sock, unsigned m) {
        static bool no_gso;
        unsigned n = 0, sent = 0;

        if (no_gso) {
                send_each(sock, 0, m);
                return;
        }
        for (unsigned i = 0, j; i < m; i = j, n++) {
                j = group_end(i, m);
                if (j - i < GSO_SEGMENTS_MIN)
                        j = i + 1;
                batch.first[n] = i;
                batch.count[n] = j - i;
                batch.groups[n].msg_hdr = batch.out[i].msg_hdr;
                batch.groups[n].msg_hdr.msg_iovlen = j - i;
                if (j - i < 2)
                        continue;
                /* its answer address, and the segment size */
                struct msghdr *g = &batch.groups[n].msg_hdr;
                size_t pl = batch.out[i].msg_hdr.msg_controllen;
                memcpy(batch.gctl[n].buf, batch.out[i].msg_hdr.msg_control, pl);
                g->msg_control = batch.gctl[n].buf;
                g->msg_controllen = pl + CMSG_SPACE(sizeof(uint16_t));
                struct cmsghdr *c = (struct cmsghdr *) (batch.gctl[n].buf + pl);
                uint16_t seg = (uint16_t) batch.iov_out[i].iov_len;
                c->cmsg_level = SOL_UDP;
                c->cmsg_type = UDP_SEGMENT;
                c->cmsg_len = CMSG_LEN(sizeof(seg));
                memcpy(CMSG_DATA(c), &seg, sizeof(seg));
        }
        while (sent < n) {
                int k = sendmmsg(sock, batch.groups + sent, n - sent, MSG_DONTWAIT);
                if (k <= 0) {
                        if (batch.count[sent] > 1 && (errno == EINVAL || errno == EIO || errno == ENOPROTOOPT ||
                                                      errno == EOPNOTSUPP || errno == EMSGSIZE))
                                no_gso = true;
                        send_each(sock, batch.first[sent], batch.first[sent] + batch.count[sent]);
                        sent++;
                        continue;
                }
                for (unsigned g = sent; g < sent + (unsigned) k; g++) {
                        counters.replied += batch.count[g];
                        counters.bytes_out += batch.groups[g].msg_len;
                }
                sent += (unsigned) k;
        }
}

/* One recvmmsg(), one sendmmsg(). Returns the datagrams read (BATCH: there may be more). */
static unsigned serve_batch(int sock) {
        unsigned m = 0;
        int n;

        for (unsigned i = 0; i < BATCH; i++) {
                batch.in[i].msg_hdr.msg_namelen = sizeof(SockAddr);
                batch.in[i].msg_hdr.msg_controllen = sizeof(PktInfo);
        }
        n = recvmmsg(sock, batch.in, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
                return 0;
        uint64_t now = worker_now();
        for (unsigned i = 0; i < (unsigned) n; i++)
                m += (unsigned) judge(i, m, now);
        send_answers(sock, m);
        return (unsigned) n;
}

static void report(int ctl) {
        (void) send(ctl, &counters, sizeof(counters), MSG_DONTWAIT | MSG_NOSIGNAL);
}

int udp_worker_main(int ctl) {
        uint64_t last_report = 0, reported_received = UINT64_MAX;
        uint32_t reported_generation;
        int sock, r;

        sock = receive_socket(ctl);
        if (sock < 0)
                return WORKER_SETUP_FAILED;
        batch.buf = malloc((size_t) BATCH * DGRAM_MAX);
        if (!batch.buf)
                return WORKER_SETUP_FAILED;
        prepare_receive();
        /* nothing is answered before the first policy is in force */
        r = read_control(ctl, true);
        if (r != 0 || !policy)
                return r > 0 ? WORKER_CLEAN : WORKER_SETUP_FAILED;
        report(ctl);
        reported_generation = counters.generation;

        for (;;) {
                struct pollfd p[2] = { { .fd = sock, .events = POLLIN }, { .fd = ctl, .events = POLLIN } };
                uint64_t now = worker_now();
                bool changed = counters.received != reported_received;
                uint64_t due = last_report + (changed ? UDP_REPORT_MIN_USEC : UDP_REPORT_MAX_USEC);
                int timeout = due > now ? (int) ((due - now + USEC_PER_MSEC - 1) / USEC_PER_MSEC) : 0;

                if (poll(p, 2, timeout) < 0 && errno != EINTR)
                        return WORKER_IO_ERROR;
                if (p[1].revents) {
                        r = read_control(ctl, false);
                        if (r != 0)
                                return r > 0 ? WORKER_CLEAN : WORKER_SETUP_FAILED;
                }
                if (p[0].revents & POLLIN)
                        for (unsigned i = 0; i < BATCHES_PER_WAKEUP && serve_batch(sock) == BATCH; i++)
                                ;
                now = worker_now();
                changed = counters.received != reported_received;
                /* a new policy is confirmed at once: the master waits for no one, but says when */
                if (now >= last_report + (changed ? UDP_REPORT_MIN_USEC : UDP_REPORT_MAX_USEC) ||
                    counters.generation != reported_generation) {
                        report(ctl);
                        last_report = now;
                        reported_received = counters.received;
                        reported_generation = counters.generation;
                }
        }
}
