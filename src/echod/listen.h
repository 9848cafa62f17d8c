/* Listening sockets: bind configured addresses, adopt systemd-activated ones, diff on reload. */
#pragma once

#include <stdbool.h>
#include <systemd/sd-event.h>

#include "echod/config.h"
#include "shared/ipaddr.h"

typedef struct Listener {
        IpAddr configured; /* what the config asked for (port may be 0) */
        IpAddr bound;      /* what the kernel gave us */
        int fd;
        bool activated; /* passed in by systemd (LISTEN_FDS) */
        bool proxy;     /* connections must start with a PROXY protocol header */
        sd_event_source *source;
} Listener;

Listener *listener_free(Listener *l);

/* socket + IPV6_V6ONLY + bind + listen. Returns 0 or -errno. */
int listener_bind(const IpAddr *addr, unsigned backlog, Listener **ret);

/* Adopt the sockets systemd passed (LISTEN_FDS); must run in the process systemd started,
 * before any fork. Unsuitable fds (not a listening TCP socket) are closed and counted in
 * *ret_rejected. Returns the number adopted (0 if not activated) or -errno. */
int listeners_adopt(Listener ***ret, unsigned *ret_rejected);

/* Build the listener set for addrs: listeners in *old whose configured address is in addrs are
 * moved over (and get the new backlog), the rest are bound fresh. On failure nothing changes:
 * fresh sockets are closed, *old is untouched, and *ret_failed names the address that failed.
 * On success *old holds only what is to be closed (moved entries become NULL). */
int listeners_update(Listener **old, unsigned n_old, const ListenAddr *addrs, unsigned n, unsigned backlog,
                     Listener ***ret, IpAddr *ret_failed);
