/* The master's end of a UDP worker's control channel (udp-channel.h). */
#include "echod/udp-channel.h"

#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <string.h>
#include <sys/socket.h>

#include "echod/udp-policy.h"
#include "shared/io.h"
#include "shared/macro.h"

static void limits_from_config(const Config *c, unsigned share, UdpLimits *l) {
        *l = (UdpLimits) {
                .rate = c->udp_rate,
                .byte_rate = c->udp_byte_rate,
                .budget = c->udp_budget / share,
                .byte_budget = c->udp_byte_budget / share,
                .burst = config_burst(c->udp_rate, c->udp_burst),
                .byte_burst = config_burst(c->udp_byte_rate, c->udp_byte_burst),
                .budget_burst = config_burst(c->udp_budget / share, 0),
                .byte_budget_burst = MAX(config_burst(c->udp_byte_budget / share, 0), c->udp_max_size),
                .sources = c->udp_sources,
                .max_size = c->udp_max_size,
                .prefix_v4 = (uint8_t) c->source_prefix_v4,
                .prefix_v6 = (uint8_t) c->source_prefix_v6,
        };
        udp_limits_deny_ports(l, c->udp_deny_ports.items, c->udp_deny_ports.n);
}

/* The local interfaces' IPv4 broadcast addresses, read afresh for every policy. */
/* An address added without one ("ip addr add 10.1.1.1/24 dev X", no "brd") has no broadcast
 * address, and getifaddrs() then reports the address itself in ifa_broadaddr: that is a unicast
 * address of ours, not a broadcast one. */
static bool is_broadcast_entry(const struct ifaddrs *i) {
        const struct sockaddr_in *addr = (const struct sockaddr_in *) i->ifa_addr;
        const struct sockaddr_in *brd = (const struct sockaddr_in *) i->ifa_broadaddr;

        if (!(i->ifa_flags & IFF_BROADCAST) || !brd || brd->sin_family != AF_INET)
                return false;
        return !(addr && addr->sin_family == AF_INET && addr->sin_addr.s_addr == brd->sin_addr.s_addr);
}

static unsigned broadcast_addresses(IpAddr *out, unsigned max) {
        struct ifaddrs *ifa = NULL;
        unsigned n = 0;

        if (getifaddrs(&ifa) < 0)
                return 0;
        for (struct ifaddrs *i = ifa; i && n < max; i = i->ifa_next)
                if (is_broadcast_entry(i) && ipaddr_from_sockaddr(i->ifa_broadaddr, sizeof(struct sockaddr_in), &out[n]) >= 0)
                        n++;
        freeifaddrs(ifa);
        return n;
}

static int send_msg(int ctl, const void *msg, size_t len) {
        return send(ctl, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 ? negative_errno() : 0;
}

static int send_addrs(int ctl, UdpAddrsMsg *m, UdpAddrKind kind, const IpAddr *a, unsigned n) {
        for (unsigned i = 0; i < n; i++) {
                m->kind[m->n] = (uint8_t) kind;
                m->addrs[m->n++] = a[i];
                if (m->n == UDP_ADDRS_PER_MSG) {
                        int r = send_msg(ctl, m, sizeof(*m));
                        if (r < 0)
                                return r;
                        m->n = 0;
                }
        }
        return 0;
}

int udp_channel_send_policy(int ctl, const Config *c, unsigned share, uint32_t generation) {
        static UdpPolicyMsg p;
        static UdpAddrsMsg a;
        IpAddr bcast[64];
        unsigned nb = broadcast_addresses(bcast, ELEMENTSOF(bcast));
        UdpCommitMsg commit = { .type = UDP_MSG_COMMIT, .generation = generation };
        int r;

        p = (UdpPolicyMsg) { .type = UDP_MSG_POLICY, .generation = generation,
                             .n_addrs = c->allow.n + c->deny.n + nb };
        limits_from_config(c, share, &p.limits);
        r = send_msg(ctl, &p, sizeof(p));
        a = (UdpAddrsMsg) { .type = UDP_MSG_ADDRS };
        if (r >= 0)
                r = send_addrs(ctl, &a, UDP_ADDR_ALLOW, c->allow.items, c->allow.n);
        if (r >= 0)
                r = send_addrs(ctl, &a, UDP_ADDR_DENY, c->deny.items, c->deny.n);
        if (r >= 0)
                r = send_addrs(ctl, &a, UDP_ADDR_BROADCAST, bcast, nb);
        if (r >= 0 && a.n > 0)
                r = send_msg(ctl, &a, sizeof(a));
        if (r >= 0)
                r = send_msg(ctl, &commit, sizeof(commit));
        return r;
}

bool udp_report_plausible(const UdpCounters *old, const UdpCounters *new) {
        uint64_t dropped = 0;

        if (new->received < old->received || new->replied < old->replied || new->bytes_in < old->bytes_in ||
            new->bytes_out < old->bytes_out)
                return false;
        for (unsigned i = 0; i < _UDP_DROP_MAX; i++) {
                if (new->dropped[i] < old->dropped[i])
                        return false;
                dropped += new->dropped[i];
        }
        return new->replied + dropped <= new->received;
}

void udp_totals_add(UdpTotals *t, const UdpCounters *old, const UdpCounters *c) {
        t->received += c->received - old->received;
        t->replied += c->replied - old->replied;
        t->bytes_in += c->bytes_in - old->bytes_in;
        t->bytes_out += c->bytes_out - old->bytes_out;
        for (unsigned i = 0; i < _UDP_DROP_MAX; i++)
                t->dropped[i] += c->dropped[i] - old->dropped[i];
}

int udp_channel_send_socket(int ctl, int fd) {
        UdpSocketMsg m = { .type = UDP_MSG_SOCKET };

        return send_with_fd(ctl, &m, sizeof(m), fd);
}

