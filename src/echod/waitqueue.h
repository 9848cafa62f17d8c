/* Connections that found the service full, waiting for a slot.
 *
 * Owns their fds, their order, their deadlines and their per-source counts, in two lanes, each
 * in arrival order: WAIT_QUEUE (at_capacity = queue: up to queue_timeout) and WAIT_GRACE (any
 * other connection over a limit: up to a short grace, at most WAIT_GRACE_MAX at once). Decides
 * nothing and logs nothing: wait_run() asks its owner for each one's verdict and hands back, by
 * callback, what is admitted and what waited until its deadline.
 *
 * Invariant (wait_check()): the per-source counts sum to the connections waiting. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "echod/admit.h"
#include "echod/children.h"

#define WAIT_GRACE_MAX 64

typedef enum WaitLane {
        WAIT_QUEUE,
        WAIT_GRACE,
        _WAIT_LANE_MAX,
} WaitLane;

typedef struct WaitCallbacks {
        /* the verdict for one that waits (its own wait not counted) */
        Refusal (*verdict)(void *userdata, const Child *info);
        /* admitted: takes fd */
        void (*admit)(void *userdata, int fd, const Child *info);
        /* its deadline came (or it was dropped): takes fd, to refuse it */
        void (*expire)(void *userdata, int fd, const Child *info, WaitLane lane, Refusal verdict);
} WaitCallbacks;

typedef struct WaitQueue WaitQueue;

int wait_queue_new(const WaitCallbacks *cb, void *userdata, WaitQueue **ret);
/* Closes every fd still waiting. */
WaitQueue *wait_queue_free(WaitQueue *q);

/* Wait until deadline; takes fd. Returns false if the lane has no room (fd untouched then). */
bool wait_add(WaitQueue *q, WaitLane lane, int fd, const Child *info, Refusal verdict, uint64_t now,
              uint64_t deadline);
unsigned wait_count(const WaitQueue *q, WaitLane lane);
unsigned wait_total(const WaitQueue *q);
unsigned wait_source_count(const WaitQueue *q, const IpAddr *source);
/* The earliest deadline, or UINT64_MAX if nobody waits. */
uint64_t wait_next_deadline(const WaitQueue *q);

/* Expire what reached its deadline; unless stopped, admit in arrival order (the lane that holds the
 * oldest first) while the verdict allows: one held back by its own source's limit does not hold
 * back the others, a full service stops the admissions. Each lane has one timeout, so it is in
 * deadline order and a run stops at the first one that is neither due nor admitted: O(1) while
 * the service is full. (After a reload shortens queue_timeout, a later arrival may wait behind
 * an earlier one's longer deadline.) */
void wait_run(WaitQueue *q, uint64_t now, bool admit);
/* Hand every one in lane to expire() now. Returns how many. */
unsigned wait_expire_lane(WaitQueue *q, WaitLane lane);
/* Stopping: close every one waiting, refusing nobody. Returns how many. */
unsigned wait_drop(WaitQueue *q);
/* New prefix lengths: re-key the per-source counts. */
void wait_regroup(WaitQueue *q, unsigned prefix_v4, unsigned prefix_v6);

int wait_check(const WaitQueue *q, const char **ret_what);
