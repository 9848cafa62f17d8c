/* sd_notify(3) messages to the service manager: READY, RELOADING, STOPPING, STATUS, WATCHDOG.
 *
 * Sent on our own non-blocking datagram socket instead of sd_notify(), which blocks when the
 * receiver's queue is full (net.unix.max_dgram_qlen, 10 by default): a slow or stuck reader must
 * never stall the event loop. A STATUS= that finds the queue full is dropped (the next one
 * supersedes it); a state change waits at most NOTIFY_WAIT_MSEC for room. */
#include "echod/notify.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "shared/macro.h"
#include "shared/timeutil.h"

#define NOTIFY_WAIT_MSEC 1000

static int notify_fd = -2; /* -2: not tried yet, -1: no manager */

static int notify_open(void) {
        const char *path = getenv("NOTIFY_SOCKET");
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        size_t len;
        int fd;

        if (!path || (path[0] != '/' && path[0] != '@') || (len = strlen(path)) >= sizeof(sa.sun_path))
                return -1;
        memcpy(sa.sun_path, path, len);
        if (sa.sun_path[0] == '@')
                sa.sun_path[0] = 0; /* abstract namespace */
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -1;
        if (connect(fd, (struct sockaddr *) &sa, (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len)) < 0) {
                close(fd);
                return -1;
        }
        return fd;
}

static void notify_send(const char *msg, bool state_change) {
        size_t len = strlen(msg);

        if (notify_fd == -2)
                notify_fd = notify_open();
        if (notify_fd < 0)
                return;
        for (int tries = 0; tries < 2; tries++) {
                if (send(notify_fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0 || errno != EAGAIN)
                        return;
                if (!state_change)
                        return;
                struct pollfd pfd = { .fd = notify_fd, .events = POLLOUT };
                (void) poll(&pfd, 1, NOTIFY_WAIT_MSEC);
        }
}

void notify_ready(const char *status) {
        char msg[600];

        snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", status);
        notify_send(msg, true);
}

void notify_reloading(void) {
        char msg[96];

        /* MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) pair the reload; 252 ignores it */
        snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu", (unsigned long long) now_usec());
        notify_send(msg, true);
}

void notify_stopping(const char *status) {
        char msg[600];

        snprintf(msg, sizeof(msg), "STOPPING=1\nSTATUS=%s", status);
        notify_send(msg, true);
}

void notify_status(const char *status) {
        char msg[600];

        snprintf(msg, sizeof(msg), "STATUS=%s", status);
        notify_send(msg, false);
}

void notify_watchdog(void) {
        notify_send("WATCHDOG=1", false);
}

void notify_close(void) {
        if (notify_fd >= 0)
                close(notify_fd);
        notify_fd = -2;
}
