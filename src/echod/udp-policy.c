/* Whether a UDP datagram gets its echo (udp-policy.h says why each check is there). */
#include "echod/udp-policy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "echod/acl.h"
#include "echod/ratelimit.h"
#include "shared/macro.h"

struct UdpPolicy {
        UdpLimits limits;
        Acl *acl;
        IpAddr *broadcast;
        unsigned n_broadcast;
        RateTable *packets, *bytes; /* per source group; NULL when that rate is 0 */
        TokenBucket budget, byte_budget;
};

static const char *const drop_names[_UDP_DROP_MAX] = {
        [UDP_DROP_BAD_SOURCE] = "bad-source",
        [UDP_DROP_BAD_DESTINATION] = "bad-destination",
        [UDP_DROP_REFLECTOR_PORT] = "reflector-port",
        [UDP_DROP_ACL] = "acl",
        [UDP_DROP_TOO_LARGE] = "too-large",
        [UDP_DROP_SOURCE_RATE] = "source-rate",
        [UDP_DROP_SOURCES_FULL] = "sources-full",
        [UDP_DROP_BUDGET] = "budget",
        [UDP_DROP_SEND_FAILED] = "send-failed",
};

const char *udp_drop_name(int reason) {
        return reason >= 0 && reason < _UDP_DROP_MAX ? drop_names[reason] : "?";
}

void udp_limits_deny_ports(UdpLimits *l, const uint16_t *ports, unsigned n) {
        memset(l->deny_ports, 0, sizeof(l->deny_ports));
        for (unsigned i = 0; i < n; i++)
                l->deny_ports[ports[i] / 8] |= (uint8_t) (1u << (ports[i] % 8));
}

UdpPolicy *udp_policy_free(UdpPolicy *p) {
        if (p) {
                acl_free(p->acl);
                free(p->broadcast);
                rate_table_free(p->packets);
                rate_table_free(p->bytes);
                free(p);
        }
        return NULL;
}

int udp_policy_new(const UdpLimits *limits, const CidrList *allow, const CidrList *deny, const CidrList *broadcast,
                   UdpPolicy **ret) {
        UdpPolicy *p = calloc(1, sizeof(UdpPolicy));
        int r;

        if (!p)
                return -ENOMEM;
        p->limits = *limits;
        r = acl_new(allow, deny, &p->acl);
        if (r >= 0 && broadcast->n > 0) {
                p->broadcast = calloc(broadcast->n, sizeof(IpAddr));
                if (p->broadcast) {
                        memcpy(p->broadcast, broadcast->items, broadcast->n * sizeof(IpAddr));
                        p->n_broadcast = broadcast->n;
                } else
                        r = -ENOMEM;
        }
        if (r >= 0 && limits->rate > 0)
                r = rate_table_new(limits->sources, &p->packets);
        if (r >= 0 && limits->byte_rate > 0)
                r = rate_table_new(limits->sources, &p->bytes);
        if (r < 0) {
                udp_policy_free(p);
                return r;
        }
        *ret = p;
        return 0;
}

/* 224.0.0.0/4 multicast, 240.0.0.0/4 reserved (255.255.255.255 among them), 0.0.0.0/8 "this
 * network"; ff00::/8 multicast, :: unspecified. */
static bool is_group_or_unspecified(const IpAddr *a) {
        if (a->family == AF_INET)
                return a->bytes[0] >= 224 || a->bytes[0] == 0;
        if (a->bytes[0] == 0xff)
                return true;
        for (unsigned i = 0; i < 16; i++)
                if (a->bytes[i])
                        return false;
        return true;
}

static bool is_local_broadcast(const UdpPolicy *p, const IpAddr *a) {
        for (unsigned i = 0; i < p->n_broadcast; i++)
                if (p->broadcast[i].family == a->family && memcmp(p->broadcast[i].bytes, a->bytes, 4) == 0)
                        return true;
        return false;
}

static bool bad_address(const UdpPolicy *p, const IpAddr *a) {
        return is_group_or_unspecified(a) || (a->family == AF_INET && is_local_broadcast(p, a));
}

/* The per-source buckets: packets, then bytes. -1 or a UdpDrop. */
static int take_source(UdpPolicy *p, const IpAddr *src, size_t len, uint64_t now) {
        const UdpLimits *l = &p->limits;
        IpAddr group = *src;
        RateTake t;

        if (!p->packets && !p->bytes)
                return -1;
        ipaddr_mask(&group, group.family == AF_INET ? l->prefix_v4 : l->prefix_v6);
        if (p->packets) {
                t = rate_table_take_n(p->packets, &group, l->rate, l->burst, 1.0, now);
                if (t != RATE_TAKEN)
                        return t == RATE_OVER ? UDP_DROP_SOURCE_RATE : UDP_DROP_SOURCES_FULL;
        }
        if (p->bytes) {
                t = rate_table_take_n(p->bytes, &group, l->byte_rate, l->byte_burst, (double) len, now);
                if (t != RATE_TAKEN)
                        return t == RATE_OVER ? UDP_DROP_SOURCE_RATE : UDP_DROP_SOURCES_FULL;
        }
        return -1;
}

int udp_policy_judge(UdpPolicy *p, const IpAddr *src, const IpAddr *dst, bool dst_not_local, size_t len,
                     uint64_t now) {
        const UdpLimits *l = &p->limits;
        int r;

        if (src->port == 0 || bad_address(p, src))
                return UDP_DROP_BAD_SOURCE;
        if (dst_not_local || bad_address(p, dst))
                return UDP_DROP_BAD_DESTINATION;
        if (l->deny_ports[src->port / 8] & (1u << (src->port % 8)))
                return UDP_DROP_REFLECTOR_PORT;
        if (!acl_allows(p->acl, src))
                return UDP_DROP_ACL;
        if (len > l->max_size)
                return UDP_DROP_TOO_LARGE;
        r = take_source(p, src, len, now);
        if (r >= 0)
                return r;
        /* the service's budget last: a source over its own rate spends none of it */
        if (l->budget > 0 && !token_bucket_take_n(&p->budget, l->budget, l->budget_burst, 1.0, now))
                return UDP_DROP_BUDGET;
        if (l->byte_budget > 0 &&
            !token_bucket_take_n(&p->byte_budget, l->byte_budget, l->byte_budget_burst, (double) len, now))
                return UDP_DROP_BUDGET;
        return -1;
}

unsigned udp_policy_sources(const UdpPolicy *p) {
        return p->packets ? rate_table_size(p->packets) : p->bytes ? rate_table_size(p->bytes) : 0;
}
