/* The connections waiting for a slot: two lanes in arrival order, deadlines, per-source counts. */
#include "echod/waitqueue.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shared/macro.h"

typedef struct Waiting {
        int fd;
        Child info;
        Refusal verdict; /* why it waits */
        uint64_t since, deadline;
        struct Waiting *prev, *next;
} Waiting;

typedef struct Lane {
        Waiting *head, *tail;
        unsigned n;
} Lane;

struct WaitQueue {
        WaitCallbacks cb;
        void *userdata;
        Lane lanes[_WAIT_LANE_MAX];
        SourceTable *sources;
};

int wait_queue_new(const WaitCallbacks *cb, void *userdata, WaitQueue **ret) {
        WaitQueue *q = calloc(1, sizeof(WaitQueue));

        if (!q)
                return -ENOMEM;
        *q = (WaitQueue) { .cb = *cb, .userdata = userdata };
        if (source_table_new(&q->sources) < 0) {
                free(q);
                return -ENOMEM;
        }
        *ret = q;
        return 0;
}

static void unlink_waiting(WaitQueue *q, Lane *l, Waiting *w) {
        if (w->prev)
                w->prev->next = w->next;
        else
                l->head = w->next;
        if (w->next)
                w->next->prev = w->prev;
        else
                l->tail = w->prev;
        l->n--;
        source_table_remove(q->sources, &w->info.source);
}

unsigned wait_drop(WaitQueue *q) {
        unsigned n = 0;

        for (int i = 0; i < _WAIT_LANE_MAX; i++)
                while (q->lanes[i].head) {
                        Waiting *w = q->lanes[i].head;
                        unlink_waiting(q, &q->lanes[i], w);
                        safe_close(w->fd);
                        free(w);
                        n++;
                }
        return n;
}

WaitQueue *wait_queue_free(WaitQueue *q) {
        if (!q)
                return NULL;
        (void) wait_drop(q);
        source_table_free(q->sources);
        free(q);
        return NULL;
}

bool wait_add(WaitQueue *q, WaitLane lane, int fd, const Child *info, Refusal verdict, uint64_t now,
              uint64_t deadline) {
        Lane *l = &q->lanes[lane];
        Waiting *w;

        if (lane == WAIT_GRACE && l->n >= WAIT_GRACE_MAX)
                return false;
        if (!(w = calloc(1, sizeof(Waiting))))
                return false;
        /* cannot fail: a key per waiting connection, far fewer than the table holds */
        if (source_table_add(q->sources, &info->source) < 0) {
                free(w);
                return false;
        }
        *w = (Waiting) { .fd = fd, .info = *info, .verdict = verdict, .since = now, .deadline = deadline,
                         .prev = l->tail };
        if (l->tail)
                l->tail->next = w;
        else
                l->head = w;
        l->tail = w;
        l->n++;
        return true;
}

unsigned wait_count(const WaitQueue *q, WaitLane lane) {
        return q->lanes[lane].n;
}

unsigned wait_total(const WaitQueue *q) {
        return q->lanes[WAIT_QUEUE].n + q->lanes[WAIT_GRACE].n;
}

unsigned wait_source_count(const WaitQueue *q, const IpAddr *source) {
        return source_table_count(q->sources, source);
}

uint64_t wait_next_deadline(const WaitQueue *q) {
        uint64_t when = UINT64_MAX;

        /* each lane has one timeout for all: its head is due first */
        for (int i = 0; i < _WAIT_LANE_MAX; i++)
                if (q->lanes[i].head)
                        when = MIN(when, q->lanes[i].head->deadline);
        return when;
}

static void expire(WaitQueue *q, WaitLane lane, Waiting *w) {
        unlink_waiting(q, &q->lanes[lane], w);
        q->cb.expire(q->userdata, w->fd, &w->info, lane, w->verdict);
        free(w);
}

/* Returns false once the service is full: nobody else fits either. */
static bool run_lane(WaitQueue *q, WaitLane lane, uint64_t now, bool admit) {
        for (Waiting *w = q->lanes[lane].head, *next; w; w = next) {
                next = w->next;
                if (now >= w->deadline) {
                        expire(q, lane, w);
                        continue;
                }
                if (!admit)
                        break; /* a lane is in deadline order: nobody behind is due either */
                Refusal verdict = q->cb.verdict(q->userdata, &w->info);
                if (verdict == ADMIT_OK) {
                        unlink_waiting(q, &q->lanes[lane], w);
                        q->cb.admit(q->userdata, w->fd, &w->info);
                        free(w);
                } else if (verdict == REFUSE_CAPACITY)
                        admit = false; /* only deadlines are left to check */
        }
        return admit;
}

void wait_run(WaitQueue *q, uint64_t now, bool admit) {
        const Waiting *g = q->lanes[WAIT_GRACE].head, *w = q->lanes[WAIT_QUEUE].head;
        WaitLane first = g && (!w || g->since <= w->since) ? WAIT_GRACE : WAIT_QUEUE;

        admit = run_lane(q, first, now, admit);
        (void) run_lane(q, first == WAIT_GRACE ? WAIT_QUEUE : WAIT_GRACE, now, admit);
}

unsigned wait_expire_lane(WaitQueue *q, WaitLane lane) {
        unsigned n = 0;

        while (q->lanes[lane].head) {
                expire(q, lane, q->lanes[lane].head);
                n++;
        }
        return n;
}

void wait_regroup(WaitQueue *q, unsigned prefix_v4, unsigned prefix_v6) {
        source_table_clear(q->sources);
        for (int i = 0; i < _WAIT_LANE_MAX; i++)
                for (Waiting *w = q->lanes[i].head; w; w = w->next) {
                        w->info.source = w->info.peer;
                        ipaddr_mask(&w->info.source, w->info.peer.family == AF_INET ? prefix_v4 : prefix_v6);
                        (void) source_table_add(q->sources, &w->info.source);
                }
}

int wait_check(const WaitQueue *q, const char **ret_what) {
        unsigned n = 0, total = wait_total(q);
        _cleanup_(freep) IpAddr *keys = malloc((total ? total : 1) * sizeof(IpAddr));

        if (!keys)
                return 0; /* nothing to check with: not a broken invariant */
        for (int i = 0; i < _WAIT_LANE_MAX; i++) {
                unsigned in_lane = 0;
                for (const Waiting *w = q->lanes[i].head; w; w = w->next, in_lane++)
                        if (n < total)
                                keys[n++] = w->info.source;
                if (in_lane != q->lanes[i].n) {
                        *ret_what = "a wait lane's count differs from its entries";
                        return -EUCLEAN;
                }
        }
        /* each source's count is the number waiting with that key, and there is no other key */
        if (!source_table_matches(q->sources, keys, n)) {
                *ret_what = "waiting per-source counts differ from the connections waiting";
                return -EUCLEAN;
        }
        if (q->lanes[WAIT_GRACE].n > WAIT_GRACE_MAX) {
                *ret_what = "more connections in the grace wait than WAIT_GRACE_MAX";
                return -EUCLEAN;
        }
        return 0;
}
