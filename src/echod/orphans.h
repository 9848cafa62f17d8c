/* What a spawner that died leaves behind, until it is accounted for: exits the master reaped
 * before it knew whose they were, and hand-offs the spawner took without saying whether it forked.
 *
 * Owns both lists and the timer that looks at the second again. Decides nothing: the owner's
 * resolve() callback says whether a lost hand-off can be settled now (its child wrote its pid);
 * expire() is called for one that never could be within ORPHANS_GRACE_USEC. Never logs. */
#pragma once

#include <stdbool.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "shared/timeutil.h"

/* a lost hand-off with no pid in its slot yet stays counted this long: its child, if there is one,
 * writes its pid first thing */
#define ORPHANS_GRACE_USEC USEC_PER_SEC
#define ORPHANS_INTERVAL_USEC (20 * USEC_PER_MSEC)
#define ORPHANS_EXITS_MAX 256

typedef struct OrphansCallbacks {
        /* true if slot is settled (started, exited or failed); false to look again later */
        bool (*resolve)(void *userdata, int slot, unsigned spawner);
        /* nobody ever claimed slot: it had no process */
        void (*expire)(void *userdata, int slot);
} OrphansCallbacks;

typedef struct Orphans Orphans;

int orphans_new(sd_event *event, const OrphansCallbacks *cb, void *userdata, Orphans **ret);
Orphans *orphans_free(Orphans *o);

/* An exit reaped before its owner was known (the oldest is forgotten first beyond
 * ORPHANS_EXITS_MAX). */
void orphans_note_exit(Orphans *o, pid_t pid, int status);
/* Take pid's noted exit: true with *ret_status if there was one. */
bool orphans_take_exit(Orphans *o, pid_t pid, int *ret_status);
/* The reaping is done for now: noted exits nobody can claim any more are forgotten. */
void orphans_reaped(Orphans *o);

/* Look at slot again until resolve() settles it or the grace runs out. Returns 0 or -ENOMEM. */
int orphans_track(Orphans *o, int slot, unsigned spawner);
unsigned orphans_tracked(const Orphans *o);
