/* The master: sd-event loop that accepts, admits, hands connections to echod-spawner, records, reloads and drains. */
#pragma once

#include "echod/config.h"
#include "echod/listen.h"

typedef struct Manager Manager;

/* Takes ownership of config, listeners (listeners[] itself is copied) and control_fd (-1: none),
 * also when it fails: they are freed then. */
int manager_new(Config *config, Listener **listeners, unsigned n_listeners, bool activated, int control_fd,
                Manager **ret);
Manager *manager_free(Manager *m);

/* Where echod-spawner is: next to argv[0] (a build tree) if there, else the installed path. */
void spawner_locate(const char *argv0);

/* Run until stopped. Calls ready() once every listener is live. Returns 0 or -errno. */
int manager_run(Manager *m, void (*ready)(void));
