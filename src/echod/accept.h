/* From accept() to admission: listeners, PROXY headers, the verdict, refusals.
 *
 * Owns: the listening sockets in use and their event sources; the connections waiting for their
 * PROXY header; the wait queue (waitqueue.h: connections over a limit, waiting for a slot); the
 * access list and rate state of the configuration in force; the refusals (refusals.h). Reads the
 * counts of admitted connections from Children, never scanning; an admitted connection goes up
 * through AcceptCallbacks.admit, which takes its fd.
 *
 * A connection over max_connections waits, with at_capacity = queue, up to queue_timeout;
 * otherwise, like one over max_per_source, up to ACCEPT_GRACE_USEC (WAIT_GRACE_MAX at most at
 * once), in case a connection ending right now frees the slot: a client that reconnects the
 * moment it has our FIN finds its old connection's process still exiting, and that process counts
 * until it is gone. The wait queue is run from a post source after an event batch in which
 * something may fit (accept_slots_freed(), or a newcomer held back only by those ahead of it),
 * never from inside an admission. */
#pragma once

#include <stdbool.h>
#include <systemd/sd-event.h>

#include "echod/children.h"
#include "echod/config.h"
#include "echod/listen.h"
#include "echod/refusals.h"
#include "shared/timeutil.h"

#define ACCEPT_GRACE_USEC (100 * USEC_PER_MSEC)

typedef struct AcceptCallbacks {
        /* Admit the connection: 0 if it took fd, or -errno (no slot): then it is refused. */
        int (*admit)(void *userdata, int fd, const Child *info);
} AcceptCallbacks;

typedef struct Accept Accept;
typedef struct AcceptPlan AcceptPlan;

/* Takes the listeners (and the array) also on failure. */
int accept_new(sd_event *event, const Children *children, const Config *config, Listener **listeners,
               unsigned n_listeners, bool activated, const AcceptCallbacks *cb, void *userdata, Accept **ret);
Accept *accept_free(Accept *a);

/* A reload, first step: build everything config c needs (listeners bound, access list, rate
 * state) without changing anything in use. Returns 0, or -errno and a malloc'd description. */
int accept_prepare(Accept *a, const Config *c, AcceptPlan **ret, char **ret_error);
/* Second step, cannot fail: c is in force from here (the caller keeps it alive). Listeners no
 * longer asked for are closed; their addresses, and those of new ones, are returned for the log. */
typedef struct AcceptChanges {
        IpAddr added[2 * CONFIG_MAX_LISTEN], removed[2 * CONFIG_MAX_LISTEN];
        unsigned n_added, n_removed;
} AcceptChanges;
void accept_commit(Accept *a, AcceptPlan *p, AcceptChanges *ret);
void accept_abort(AcceptPlan *p);

/* Slots were freed (or the limits changed): after this event batch, the wait queue admits what
 * now fits, in order. */
void accept_slots_freed(Accept *a);
/* Stopping: close the listeners and every connection not admitted. Returns how many. */
unsigned accept_stop(Accept *a);
/* Connections accepted and waiting for their PROXY header (they outlive accept_stop()), and
 * closing them all; returns how many. */
unsigned accept_headers_waiting(const Accept *a);
unsigned accept_drop_headers(Accept *a);
/* A connection admitted but never started (fork failed): a refusal all the same. */
void accept_note_refusal(Accept *a, Refusal reason, const Child *info, const char *detail, int error);

Listener *const *accept_listeners(const Accept *a, unsigned *ret_n);
unsigned accept_queued(const Accept *a);
const Refusals *accept_refusals(const Accept *a);
/* The per-source rate table's fill; its counters include the tables reloads replaced. */
void accept_rate_table(const Accept *a, SourceTableStats *ret);

int accept_check(const Accept *a, const char **ret_what);
