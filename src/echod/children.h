/* Admitted connections: the one owner of each connection's life, from admission to the end of
 * its process.
 *
 * Owns the slot table (a slot per admitted connection, and its socket: held until the
 * connection's process is gone, its byte counts read from the kernel — a child writes nothing the
 * master reads), the per-source counts of admitted connections, and the counters of connections
 * that ended (by how they ended, and histograms of their duration and bytes). Verbs only: no
 * logging, no event loop. The master logs the records they return.
 *
 * A connection's life:
 *   children_admit()    slot taken, counted: pending (handed to the spawner, no process yet)
 *   children_started()  the spawner forked it: live, indexed by pid
 *   children_exited()   its process is gone: slot freed, the record returned
 *   children_failed()   no process was ever made: slot freed, counted as a refusal, not accepted
 * A connection counts against max_connections and max_per_source from children_admit() until
 * one of the last two, and nothing else frees a slot.
 *
 * Invariants (children_check(), asserted after every event in an invariants build):
 *   active = pending + live; the per-source counts sum to active; the pid index holds exactly
 *   the live ones, each once; free + used slots = slots ever used; the ended ones by reason, and
 *   each histogram's buckets and count, sum to closed. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "echod/admit.h"
#include "echod/worker.h"
#include "shared/ipaddr.h"

#define CHILD_PID_PENDING ((pid_t) -1)

/* Master-private: a child cannot scribble over what the master trusts. */
typedef struct Child {
        pid_t pid;        /* CHILD_PID_PENDING: handed to the spawner, not forked yet */
        unsigned spawner; /* the spawner process (its generation) that holds or forked it */
        bool adopted;     /* reparented to the master when its spawner exited */
        bool proxied;     /* peer came from a PROXY header; via is the sender */
        IpAddr peer;
        IpAddr via;
        IpAddr local;
        IpAddr source;        /* the per-source key it counts under */
        uint64_t start_usec;  /* CLOCK_MONOTONIC, at admission */
        uint32_t header_len;  /* PROXY header bytes the master read: not the client's payload */
} Child;

/* How a connection ended, for the log and the counters. */
typedef struct ChildRecord {
        Child child;
        pid_t pid;
        uint64_t duration_usec;
        uint64_t bytes_in, bytes_out;
        char reason[48];  /* "clean", "idle-timeout", "killed-by-SIGKILL", "fork-failed", "spawner-failed", ... */
        bool failure;     /* an error worth a warning even with log_connections off */
} ChildRecord;

/* How a process ended, for the counters: a bounded set. The worker's exit codes (WorkerExit) keep
 * their numbers; any other exit code is one, death by any signal another (the record names the
 * signal, the counters do not). */
typedef enum ChildEnd {
        CHILD_END_UNKNOWN = _WORKER_EXIT_MAX, /* "unknown-exit": e.g. reaped by a dead spawner, unreported */
        CHILD_END_KILLED,                     /* "killed": by a signal */
        _CHILD_END_MAX,
} ChildEnd;

/* "clean", "idle-timeout", ... (worker_exit_reason()), "unknown-exit", "killed" */
const char *child_end_name(int end);

/* A histogram of ended processes, with fixed upper bounds (inclusive, ascending). */
#define CHILD_HISTOGRAM_BOUNDS_MAX 8
typedef struct ChildHistogram {
        const uint64_t *bounds; /* n_bounds entries */
        unsigned n_bounds;
        /* per bucket, not cumulative; [n_bounds]: above the last bound */
        uint64_t counts[CHILD_HISTOGRAM_BOUNDS_MAX + 1];
        uint64_t sum, count;
} ChildHistogram;

typedef struct ChildCounters {
        uint64_t accepted;           /* admitted and handed to a process */
        uint64_t closed;             /* processes that ended */
        uint64_t crashed;            /* ... from a signal, or failed their setup */
        uint64_t fork_failed;        /* admitted, but no process could be made */
        uint64_t bytes_in, bytes_out; /* of the connections that ended */
        unsigned peak;
        uint64_t closed_by[_CHILD_END_MAX]; /* closed, by how (ChildEnd); sums to closed */
        ChildHistogram duration_usec; /* closed: time from admission to the end of the process */
        ChildHistogram bytes;         /* closed: bytes received from the client (bytes_in) */
} ChildCounters;

typedef struct Children Children;

int children_new(Children **ret);
/* Closes every socket still held. */
Children *children_free(Children *t);

/* --- counts that decisions read (no scans) --- */
unsigned children_active(const Children *t);
unsigned children_pending(const Children *t);
unsigned children_source_count(const Children *t, const IpAddr *source);
const ChildCounters *children_counters(const Children *t);
/* The per-source counts' table: its fill (it holds a key per admitted connection at most). */
void children_source_table(const Children *t, SourceTableStats *ret);

/* --- verbs --- */
/* Take a slot for an admitted connection (info->source is its per-source key) and its socket fd,
 * held (and closed) here from now on. Returns the slot, or -ENOSPC (fd stays the caller's). */
int children_admit(Children *t, const Child *info, int fd, uint64_t now);
/* The spawner `spawner` forked slot's child. -ENOENT if the slot is not pending, -EEXIST if the
 * pid is already someone's. */
int children_started(Children *t, int slot, pid_t pid, unsigned spawner);
/* No process for slot: frees it. error is -ECHILD if the spawner that took it died first (the
 * reason is then "spawner-failed"), -ECANCELED if dropped at stop, else fork()'s -errno
 * ("fork-failed"). -ENOENT if not pending. */
int children_failed(Children *t, int slot, int error, uint64_t now, ChildRecord *ret);
/* pid's process is gone with wait status: frees its slot. -ENOENT if pid is not a live child. */
int children_exited(Children *t, pid_t pid, int status, uint64_t now, ChildRecord *ret);
/* Spawner `spawner` has exited: its live children are the master's own now (it is their
 * subreaper). Returns how many. */
unsigned children_adopt(Children *t, unsigned spawner);
/* The socket held for slot (to find which process has it, when its spawner died before saying),
 * or -ENOENT. */
int children_fd(const Children *t, int slot);
/* New prefix lengths: re-key every admitted connection's per-source count. Cannot fail. */
void children_regroup(Children *t, unsigned prefix_v4, unsigned prefix_v6);

/* --- reading --- */
/* Iterate admitted connections (pending ones too): start with *pos = 0; returns NULL at the end. */
const Child *children_next(const Children *t, size_t *pos, int *ret_slot);
/* A slot's bytes so far and idle time, from the kernel (connstat.h); zeros if it cannot say. */
void children_stat(const Children *t, int slot, uint64_t *ret_in, uint64_t *ret_out, uint64_t *ret_idle_usec);
/* Iterate per-source counts: start with *pos = 0. */
bool children_next_source(const Children *t, size_t *pos, IpAddr *ret_source, unsigned *ret_count);
const Child *children_get_by_pid(const Children *t, pid_t pid);

/* Check the invariants above by walking everything. Returns 0, or -EUCLEAN with *ret_what naming
 * the first one broken. */
int children_check(const Children *t, const char **ret_what);
