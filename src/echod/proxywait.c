/* Connections waiting for their PROXY protocol header: one I/O source and one timer each. */
#include "echod/proxywait.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "shared/macro.h"
#include "shared/proxy.h"
#include "shared/timeutil.h"

typedef struct Waiter {
        ProxyWait *owner;
        int fd;
        Child info;
        ProxyReader header; /* the part of it read so far */
        sd_event_source *io, *timer;
        uint64_t timeout_usec;
        struct Waiter *prev, *next;
} Waiter;

struct ProxyWait {
        sd_event *event;
        ProxyWaitCallbacks cb;
        void *userdata;
        Waiter *head;
        unsigned n;
};

int proxy_wait_new(sd_event *event, const ProxyWaitCallbacks *cb, void *userdata, ProxyWait **ret) {
        ProxyWait *w = calloc(1, sizeof(ProxyWait));

        if (!w)
                return -ENOMEM;
        *w = (ProxyWait) { .event = sd_event_ref(event), .cb = *cb, .userdata = userdata };
        *ret = w;
        return 0;
}

/* Out of the list, its sources gone; the fd is the caller's. */
static int detach(Waiter *x) {
        ProxyWait *w = x->owner;

        if (x->io || x->timer) {
                if (x->prev)
                        x->prev->next = x->next;
                else
                        w->head = x->next;
                if (x->next)
                        x->next->prev = x->prev;
                w->n--;
        }
        x->io = sd_event_source_disable_unref(x->io);
        x->timer = sd_event_source_disable_unref(x->timer);
        proxy_reader_done(&x->header);
        int fd = x->fd;
        free(x);
        return fd;
}

unsigned proxy_wait_drop(ProxyWait *w) {
        unsigned n = 0;

        while (w->head) {
                safe_close(detach(w->head));
                n++;
        }
        return n;
}

ProxyWait *proxy_wait_free(ProxyWait *w) {
        if (!w)
                return NULL;
        (void) proxy_wait_drop(w);
        sd_event_unref(w->event);
        free(w);
        return NULL;
}

unsigned proxy_wait_count(const ProxyWait *w) {
        return w->n;
}

static const char *error_detail(int r) {
        switch (r) {
        case -ECONNRESET:
                return "connection closed before the header";
        case -EBADMSG:
        case -E2BIG:
        case -EPROTONOSUPPORT:
        case -EAFNOSUPPORT:
                return "malformed header";
        default:
                return "error reading the header";
        }
}

/* Read what arrived. Returns 0 if the header is still incomplete; otherwise x is finished (its
 * result handed back) and 1 is returned. */
static int advance(Waiter *x) {
        ProxyWait *w = x->owner;
        ProxyHeader h;
        int r = proxy_header_read(x->fd, &x->header, &h);

        if (r == 0)
                return 0;
        Child info = x->info;
        if (r > 0)
                info.header_len = (uint32_t) r;
        if (r > 0 && h.command == PROXY_CMD_PROXY && h.has_addresses) {
                info.peer = h.src;
                info.proxied = true;
        }
        int fd = detach(x);
        if (r < 0)
                w->cb.failed(w->userdata, fd, &info, error_detail(r));
        else
                w->cb.done(w->userdata, fd, &info);
        return 1;
}

static int on_readable(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        (void) advance(userdata);
        return 0;
}

static int on_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Waiter *x = userdata;
        ProxyWait *w = x->owner;
        Child info = x->info;
        char why[64];

        snprintf(why, sizeof(why), "no header within %llu s",
                 (unsigned long long) (x->timeout_usec / USEC_PER_SEC));
        int cfd = detach(x);
        w->cb.failed(w->userdata, cfd, &info, why);
        return 0;
}

void proxy_wait_start(ProxyWait *w, int fd, const Child *info, uint64_t timeout_usec) {
        Waiter *x = calloc(1, sizeof(Waiter));
        int r;

        if (!x) {
                w->cb.failed(w->userdata, fd, info, "out of memory");
                return;
        }
        *x = (Waiter) { .owner = w, .fd = fd, .info = *info, .timeout_usec = timeout_usec };
        /* usually the header came with the handshake's first segment */
        if (advance(x))
                return;
        if (w->n >= PROXY_WAIT_MAX) {
                fd = detach(x);
                w->cb.failed(w->userdata, fd, info, "too many connections waiting for a header");
                return;
        }
        r = sd_event_add_io(w->event, &x->io, fd, EPOLLIN, on_readable, x);
        if (r >= 0)
                r = sd_event_add_time_relative(w->event, &x->timer, CLOCK_MONOTONIC, timeout_usec,
                                               USEC_PER_MSEC * 10, on_timeout, x);
        if (r < 0) {
                x->io = sd_event_source_disable_unref(x->io);
                x->timer = sd_event_source_disable_unref(x->timer);
                fd = detach(x);
                w->cb.failed(w->userdata, fd, info, "cannot watch the connection");
                return;
        }
        x->next = w->head;
        if (w->head)
                w->head->prev = x;
        w->head = x;
        w->n++;
}
