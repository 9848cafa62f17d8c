/* What a dead spawner leaves behind: unclaimed exits, and lost hand-offs looked at again. */
#include "echod/orphans.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct Exit {
        pid_t pid;
        int status;
} Exit;

typedef struct Lost {
        int slot;
        unsigned spawner;
        uint64_t deadline;
} Lost;

struct Orphans {
        sd_event *event;
        OrphansCallbacks cb;
        void *userdata;
        Exit exits[ORPHANS_EXITS_MAX];
        unsigned n_exits;
        Lost *lost;
        unsigned n_lost;
        sd_event_source *timer;
};

int orphans_new(sd_event *event, const OrphansCallbacks *cb, void *userdata, Orphans **ret) {
        Orphans *o = calloc(1, sizeof(Orphans));

        if (!o)
                return -ENOMEM;
        o->event = sd_event_ref(event);
        o->cb = *cb;
        o->userdata = userdata;
        *ret = o;
        return 0;
}

Orphans *orphans_free(Orphans *o) {
        if (!o)
                return NULL;
        sd_event_source_disable_unref(o->timer);
        sd_event_unref(o->event);
        free(o->lost);
        free(o);
        return NULL;
}

void orphans_note_exit(Orphans *o, pid_t pid, int status) {
        if (o->n_exits == ORPHANS_EXITS_MAX)
                memmove(o->exits, o->exits + 1, --o->n_exits * sizeof(Exit));
        o->exits[o->n_exits++] = (Exit) { pid, status };
}

bool orphans_take_exit(Orphans *o, pid_t pid, int *ret_status) {
        for (unsigned i = 0; i < o->n_exits; i++)
                if (o->exits[i].pid == pid) {
                        *ret_status = o->exits[i].status;
                        o->exits[i] = o->exits[--o->n_exits];
                        return true;
                }
        return false;
}

void orphans_reaped(Orphans *o) {
        if (o->n_lost == 0)
                o->n_exits = 0; /* nobody left to claim them */
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Orphans *o = userdata;
        uint64_t now = now_usec();

        for (unsigned i = 0; i < o->n_lost;) {
                Lost l = o->lost[i];
                bool done = o->cb.resolve(o->userdata, l.slot, l.spawner);
                if (!done && now < l.deadline) {
                        i++;
                        continue;
                }
                o->lost[i] = o->lost[--o->n_lost];
                if (!done)
                        o->cb.expire(o->userdata, l.slot);
        }
        if (o->n_lost == 0)
                return sd_event_source_set_enabled(s, SD_EVENT_OFF);
        (void) sd_event_source_set_time(s, usec + ORPHANS_INTERVAL_USEC);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

int orphans_track(Orphans *o, int slot, unsigned spawner) {
        Lost *n = reallocarray(o->lost, o->n_lost + 1, sizeof(Lost));

        if (!n)
                return -ENOMEM;
        o->lost = n;
        o->lost[o->n_lost++] = (Lost) { slot, spawner, now_usec() + ORPHANS_GRACE_USEC };
        if (!o->timer)
                return sd_event_add_time_relative(o->event, &o->timer, CLOCK_MONOTONIC, ORPHANS_INTERVAL_USEC,
                                                  USEC_PER_MSEC, on_timer, o);
        if (sd_event_source_get_enabled(o->timer, NULL) == 0) {
                (void) sd_event_source_set_time_relative(o->timer, ORPHANS_INTERVAL_USEC);
                return sd_event_source_set_enabled(o->timer, SD_EVENT_ONESHOT);
        }
        return 0;
}

unsigned orphans_tracked(const Orphans *o) {
        return o->n_lost;
}
