/* The control socket: 'echod status' asks the running master over AF_UNIX. */
#pragma once

#include <stdio.h>
#include <systemd/sd-event.h>

#include "echod/status.h"

/* The server: answers "status" and "status FORMAT" (status_format_name(): "text", "json",
 * "prometheus") with what report() returns (a malloc'd buffer).
 * Owns its listening fd and its clients; never blocks the loop. */
typedef int (*ControlReport)(void *userdata, StatusFormat format, char **ret, size_t *ret_len);
typedef struct Control Control;

/* Takes fd, also on failure. */
int control_new(sd_event *event, int fd, ControlReport report, void *userdata, Control **ret);
Control *control_free(Control *c);

/* In main, before privileges are dropped: create the directory if needed, take over a stale
 * socket (nobody answering on it), bind, chmod 0600, listen. Returns the fd, or -EADDRINUSE if
 * a running echod answers there, or -errno. */
int control_bind(const char *path);

/* The client: send command ("status" or "status FORMAT"), copy the answer to out.
 * Returns 0 or -errno (-ENOENT/-ECONNREFUSED: no echod listening there). */
int control_query(const char *path, const char *command, FILE *out);
