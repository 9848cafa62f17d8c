/* The slot table: one slot per live child, shared counters in a MAP_SHARED mapping. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "echod/config.h"
#include "shared/ipaddr.h"

#define SLOTS_MAX CONFIG_MAX_CONNECTIONS

/* Written by the child (single writer, relaxed atomics), read by the master. Made before any
 * fork, so every child sees the same mapping. */
typedef struct SlotShared {
        _Atomic uint64_t bytes_in;
        _Atomic uint64_t bytes_out;
        _Atomic uint64_t last_active_usec; /* CLOCK_MONOTONIC */
        uint64_t reserved;
} SlotShared;

/* Master-private: a child cannot scribble over what the master trusts. */
typedef struct Child {
        pid_t pid;
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
/* Bind a reserved slot to a forked child. */
int child_table_commit(ChildTable *t, int slot, const Child *child);
/* Look up an exited child by pid, copy out its data and free its slot. Returns the slot or -ENOENT. */
int child_table_release(ChildTable *t, pid_t pid, Child *ret_child, uint64_t *ret_in, uint64_t *ret_out);

SlotShared *child_table_shared(ChildTable *t, int slot);
/* The slot of a live child, or -ENOENT. */
int child_table_slot_of(ChildTable *t, pid_t pid);
const Child *child_table_get(const ChildTable *t, int slot);
unsigned child_table_active(const ChildTable *t);
/* Iterate live children: start with *pos = 0. */
const Child *child_table_next(const ChildTable *t, size_t *pos);
