/* Connections waiting for their PROXY protocol header.
 *
 * Owns their fds, the part of each header read so far, their deadlines and their number (at most
 * PROXY_WAIT_MAX). Reads each header without ever taking a payload byte (shared/proxy.h) and
 * hands the connection back by callback: with the client's address when the header came, or with
 * the reason when it did not. Decides nothing about admission and logs nothing. */
#pragma once

#include <stdbool.h>
#include <systemd/sd-event.h>

#include "echod/children.h"

#define PROXY_WAIT_MAX 1024

typedef struct ProxyWaitCallbacks {
        /* The header came: info->peer is its source (info->proxied) or the socket peer (a LOCAL or
         * UNKNOWN header). Takes fd. */
        void (*done)(void *userdata, int fd, const Child *info);
        /* No valid header (why says so): takes fd, to refuse it. */
        void (*failed)(void *userdata, int fd, const Child *info, const char *why);
} ProxyWaitCallbacks;

typedef struct ProxyWait ProxyWait;

int proxy_wait_new(sd_event *event, const ProxyWaitCallbacks *cb, void *userdata, ProxyWait **ret);
/* Closes every connection still waiting. */
ProxyWait *proxy_wait_free(ProxyWait *w);

/* Read fd's header (info->via and info->local set, peer = via); takes fd. The result comes by
 * callback: at once if the header is already there, else when it arrives or after timeout_usec. */
void proxy_wait_start(ProxyWait *w, int fd, const Child *info, uint64_t timeout_usec);
unsigned proxy_wait_count(const ProxyWait *w);
/* Stopping: close every one waiting, refusing nobody. Returns how many. */
unsigned proxy_wait_drop(ProxyWait *w);
