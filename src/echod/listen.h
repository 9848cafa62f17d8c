/* Listening sockets: bind configured addresses, adopt systemd-activated ones, diff on reload. */
#pragma once

#include <stdbool.h>
#include <systemd/sd-event.h>

#include "echod/config.h"
#include "shared/ipaddr.h"

/* A UDP socket's receive buffer (the kernel doubles it for its bookkeeping) */
#define LISTENER_UDP_RCVBUF (4 * 1024 * 1024)

typedef struct Listener {
        IpAddr configured; /* what the config asked for (port may be 0) */
        IpAddr bound;      /* what the kernel gave us */
        int fd;
        bool activated; /* passed in by systemd (LISTEN_FDS) */
        bool proxy;     /* connections must start with a PROXY protocol header */
        bool datagram;  /* a UDP socket (listen_udp, or a datagram socket systemd passed) */
        sd_event_source *source;
} Listener;

Listener *listener_free(Listener *l);

/* socket + IPV6_V6ONLY + bind + listen; or, datagram, a UDP socket that reports where each
 * datagram was sent (IP_PKTINFO, IPV6_RECVPKTINFO). Returns 0 or -errno. */
int listener_bind(const IpAddr *addr, bool datagram, unsigned backlog, Listener **ret);

/* Adopt the sockets systemd passed (LISTEN_FDS); must run in the process systemd started,
 * before any fork. Listening TCP sockets and UDP sockets (datagram set) are adopted; other fds
 * are closed and counted in *ret_rejected. Returns the number adopted (0 if not activated) or
 * -errno. */
int listeners_adopt(Listener ***ret, unsigned *ret_rejected);

/* A reload's listener set, built before anything changes: listeners in old whose configured
 * address is asked for again are kept (referenced, untouched), the rest are bound fresh. The PROXY
 * requirement and backlog of kept ones change only at commit. */
typedef struct ListenerPlan {
        Listener **list; /* the new set, in addrs order */
        bool *proxy;     /* each one's PROXY requirement from the commit on */
        bool *fresh;     /* bound for this plan: closed again by an abort */
        unsigned n;
        unsigned backlog; /* 0: leave the backlog of kept ones alone */
        IpAddr failed;    /* on failure: the address that could not be bound */
} ListenerPlan;

/* Returns 0, or -errno with ret->failed naming the address; nothing is bound then. */
int listeners_prepare(Listener *const *old, unsigned n_old, const ListenAddr *addrs, unsigned n, unsigned backlog,
                      ListenerPlan *ret);
/* Socket-activated: the same sockets; only the PROXY requirement can change. */
int listeners_prepare_activated(Listener *const *old, unsigned n_old, bool proxy, ListenerPlan *ret);
/* Split a list into its stream and datagram sockets (both arrays new, *list freed). Returns 0 or
 * -ENOMEM (then nothing changed). */
int listeners_split(Listener ***list, unsigned n, Listener ***ret_stream, unsigned *ret_n_stream,
                    Listener ***ret_datagram, unsigned *ret_n_datagram);
/* Cannot fail: apply the plan, close the old listeners it does not keep, free the old array.
 * Returns the new array (p->n entries); the plan is spent. */
Listener **listeners_commit(Listener **old, unsigned n_old, ListenerPlan *p);
/* Close what the plan bound fresh; the old set was never touched. */
void listeners_abort(ListenerPlan *p);
