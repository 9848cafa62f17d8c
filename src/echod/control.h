/* The control socket: 'echod status' asks the running master over AF_UNIX. */
#pragma once

#include <stdio.h>

/* In main, before privileges are dropped: create the directory if needed, take over a stale
 * socket (nobody answering on it), bind, chmod 0600, listen. Returns the fd, or -EADDRINUSE if
 * a running echod answers there, or -errno. */
int control_bind(const char *path);

/* The client: send command ("status" or "status json"), copy the answer to out.
 * Returns 0 or -errno (-ENOENT/-ECONNREFUSED: no echod listening there). */
int control_query(const char *path, const char *command, FILE *out);
