/* The shared slot page: the one piece of state a child writes and the master reads.
 *
 * A memfd the master creates and echod-spawner maps before any fork, so every child sees the same
 * pages: one SlotShared per admitted connection, indexed by the slot the master chose. The child
 * writes only its own slot's counters (single writer, relaxed atomics); the master treats every
 * field as a hint about that one connection, never as accounting it depends on. */
#pragma once

#include <stdatomic.h>
#include <stdint.h>

#define SLOTS_MAX 65536

typedef struct SlotShared {
        _Atomic uint64_t bytes_in;
        _Atomic uint64_t bytes_out;
        _Atomic uint64_t last_active_usec; /* CLOCK_MONOTONIC */
        _Atomic uint64_t pid; /* written by the child first thing, and by the spawner after fork:
                               * the master's hint if the spawner dies before reporting STARTED
                               * (believed only for a child of the master's not known yet) */
} SlotShared;
