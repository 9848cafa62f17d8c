/* The master: sd-event loop that accepts, admits, hands connections to echod-spawner, records, reloads and drains. */
#pragma once

#include "echod/config.h"
#include "echod/listen.h"

typedef struct Manager Manager;

/* Takes ownership of config, listeners (the malloc'd array too) and control_fd (-1: none), also
 * when it fails: they are freed then. */
int manager_new(Config *config, Listener **listeners, unsigned n_listeners, bool activated, int control_fd,
                Manager **ret);
Manager *manager_free(Manager *m);

/* Run until stopped. Calls ready() once every listener is live. Returns 0 or -errno. */
int manager_run(Manager *m, void (*ready)(void));
