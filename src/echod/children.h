/* The slot table: one slot per live child, shared counters in a MAP_SHARED mapping. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "echod/config.h"
#include "shared/ipaddr.h"

#define SLOTS_MAX CONFIG_MAX_CONNECTIONS

/* Written by the child (single writer, relaxed atomics), read by the master. A memfd mapped by
 * the master and by echod-spawner before any fork, so every child sees the same pages. */
typedef struct SlotShared {
        _Atomic uint64_t bytes_in;
        _Atomic uint64_t bytes_out;
        _Atomic uint64_t last_active_usec; /* CLOCK_MONOTONIC */
        _Atomic uint64_t pid; /* written by the spawner after fork; the master's fallback if the
                               * spawner dies before telling it (a child could overwrite it) */
        _Atomic uint64_t finished; /* set by the child before its last FIN: the peer is done with
                                    * it, though its exit may not be reaped yet */
} SlotShared;

/* Master-private: a child cannot scribble over what the master trusts. */
#define CHILD_PID_PENDING ((pid_t) -1)

typedef struct Child {
        pid_t pid;            /* CHILD_PID_PENDING: handed to the spawner, not forked yet */
        bool adopted;         /* reparented to the master when the spawner died */
        bool proxied; /* peer came from a PROXY header; via is the sender */
        IpAddr peer;
        IpAddr via;
        IpAddr local;
        IpAddr source; /* the per-source key it was admitted under */
        uint64_t start_usec; /* CLOCK_MONOTONIC */
} Child;

typedef struct ChildTable ChildTable;

int child_table_new(ChildTable **ret);
ChildTable *child_table_free(ChildTable *t);

/* Take a free slot and zero its shared counters. Returns the slot index or -ENOSPC. */
int child_table_reserve(ChildTable *t);
/* Give back a reserved slot that never got a child (fork failed). */
void child_table_abort(ChildTable *t, int slot);
/* Bind a reserved slot to a connection handed to the spawner; child->pid is its pid if known,
 * else 0 until child_table_started(). */
int child_table_commit(ChildTable *t, int slot, const Child *child);
/* The spawner forked slot's child. Returns 0, or -ENOENT if the slot is not waiting for one. */
int child_table_started(ChildTable *t, int slot, pid_t pid);
/* Copy out a slot's data and free it. Returns the slot or -ENOENT. */
int child_table_release_slot(ChildTable *t, int slot, Child *ret_child, uint64_t *ret_in, uint64_t *ret_out);
/* Same, looked up by the exited child's pid. */
int child_table_release(ChildTable *t, pid_t pid, Child *ret_child, uint64_t *ret_in, uint64_t *ret_out);
/* Slots handed over whose pid is not known yet: start with *pos = 0; -ENOENT at the end. */
int child_table_next_pending(const ChildTable *t, int *pos);
/* Live children that have finished (SlotShared.finished) but are not reaped yet, and how many
 * of them were admitted under source. Only advisory: a child could set it early, and then only
 * its own source is admitted sooner. */
unsigned child_table_finishing(const ChildTable *t, const IpAddr *source, unsigned *ret_same_source);
/* The spawner died: every live child with a known pid is the master's own now. Returns how many. */
unsigned child_table_adopt_all(ChildTable *t);
/* The memfd behind the shared counters, for the spawner to map. */
int child_table_memfd(const ChildTable *t);

SlotShared *child_table_shared(ChildTable *t, int slot);
/* The slot of a live child, or -ENOENT. */
int child_table_slot_of(ChildTable *t, pid_t pid);
const Child *child_table_get(const ChildTable *t, int slot);
unsigned child_table_active(const ChildTable *t);
/* Iterate live children whose pid is known: start with *pos = 0. */
const Child *child_table_next(const ChildTable *t, size_t *pos);
