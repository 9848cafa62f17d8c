/* The master's side of echod-spawner: the processes that fork the children, and the hand-offs
 * waiting for one.
 *
 * Owns: the spawner processes (the current one, and retired ones finishing what they were sent),
 * the hand-off queue (admitted connections not yet sent, in order), and per process the hand-offs
 * it has taken but not yet reported (STARTED or FAILED come back in the order they were sent).
 * Knows a connection only as its fd and slot number; reports back through SpawnerCallbacks and
 * never calls into the code that owns it. Every send is non-blocking.
 *
 * Each hand-off ends in exactly one callback: started() or failed() for its slot, or lost() if
 * the process that took it died before saying which. A process that exits gives gone() first
 * (its children are the master's now: it is their subreaper), then lost() for what it held.
 *
 * Liveness: the current process has SPAWNER_HANDOFF_TIMEOUT_USEC from the moment it owes a
 * hand-off (queued for it, or sent and not reported) to its next progress (a hand-off taken or
 * reported). A process that misses it (stopped, stuck) gets stuck(), is killed and is replaced at
 * once: the queue goes to the replacement, what the dead one took ends in lost(). One the kernel
 * shows stopped for as long is replaced the same way with nothing owed (stuck() with waiting 0):
 * it reaps and reports nothing, so the ends of its children would go unseen. */
#pragma once

#include <stdbool.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "echod/sandbox.h"
#include "echod/spawn-proto.h"
#include "echod/worker.h"
#include "shared/timeutil.h"

#define SPAWNER_HANDOFF_TIMEOUT_USEC (3 * USEC_PER_SEC)

typedef struct SpawnerCallbacks {
        void (*started)(void *userdata, int slot, pid_t pid, unsigned spawner);
        /* no process for slot: error is -errno from fork(), or -ECANCELED when dropped at stop */
        void (*failed)(void *userdata, int slot, int error);
        void (*exited)(void *userdata, pid_t pid, int status);
        void (*gone)(void *userdata, unsigned spawner, pid_t pid, int status, bool retired);
        void (*lost)(void *userdata, int slot, unsigned spawner);
        /* a process was started to replace one that died (pid), or could not be (error; retried) */
        void (*restarted)(void *userdata, pid_t pid, int error);
        /* the current process made no progress for stalled_usec with `waiting` hand-offs: it is
         * killed (gone() and lost() follow when it is reaped) and a replacement started */
        void (*stuck)(void *userdata, pid_t pid, uint64_t stalled_usec, unsigned waiting);
} SpawnerCallbacks;

typedef struct Spawner Spawner;
typedef struct SpawnerProc SpawnerProc;

typedef enum SpawnerState {
        SPAWNER_RUNNING,
        SPAWNER_STUCK,      /* work waits and nothing moved for a second or more */
        SPAWNER_RESTARTING, /* no current process */
} SpawnerState;

/* "running", "stuck", "restarting" */
const char *spawner_state_name(SpawnerState state);

typedef struct SpawnerStatus {
        SpawnerState state;
        uint64_t stalled_usec; /* since the current process last moved, while work waits */
        pid_t pid;         /* the current process; 0 while none runs */
        unsigned restarts; /* processes started after the first, for any reason */
        unsigned retiring; /* retired processes still finishing */
        unsigned queued;   /* hand-offs waiting to be sent */
        unsigned in_flight; /* sent, not yet reported */
} SpawnerStatus;

/* Where echod-spawner is: next to argv0 (a build tree; made absolute, so a daemon that moved to /
 * still finds it), else next to /proc/self/exe, else where the package installs it. Call once,
 * before any chdir. */
void spawner_locate(const char *argv0);
const char *spawner_path(void);
/* Open the binary found while echod may still be root; a start that can no longer reach it by
 * its path executes it through that fd (/proc/self/fd/N), so the user echod runs as needs no
 * search permission on the directories above it (a build tree in a 0700 home). Returns 0 or
 * -errno (then only the path is tried). */
int spawner_pin(void);

/* kind: what every child of these processes runs (a connection, or a UDP worker) */
int spawner_new(sd_event *event, SpawnKind kind, const SpawnerCallbacks *cb, void *userdata, Spawner **ret);
/* At exit: close every channel (processes exit at its end), wait for them a bounded time, kill
 * what is left, reap; and the pinned binary. */
Spawner *spawner_free(Spawner *s);

/* Start the first process in sandbox sb (kept by pointer: the caller keeps it alive until a
 * commit replaces it). */
int spawner_start(Spawner *s, const Sandbox *sb);
/* A reload changes the sandbox: start a process in the new one, not yet used. */
int spawner_prepare(Spawner *s, const Sandbox *sb, SpawnerProc **ret);
/* Cannot fail: the current process is retired (finishes what it was sent, its children go on in
 * their old sandbox) and p takes the queue and everything after. */
void spawner_commit(Spawner *s, SpawnerProc *p, const Sandbox *sb);
pid_t spawner_proc_pid(const SpawnerProc *p);
/* The reload failed: p is retired unused. */
void spawner_abort(Spawner *s, SpawnerProc *p);

/* Hand an admitted connection over. Sent now (SCM_RIGHTS: the process gets its own copy) or
 * queued in order; fd is borrowed: the caller keeps it open until started/failed/lost. */
void spawner_handoff(Spawner *s, int fd, int slot, const WorkerParams *params, const char *title);
/* Stopping: every hand-off not sent yet ends in failed(-ECANCELED). Returns how many. */
unsigned spawner_drop_queue(Spawner *s);
/* Send sig to every process's group: the process itself (which blocks SIGTERM; SIGKILL ends it)
 * and every child it forked that is still in it. No message, nothing that can block. */
void spawner_signal(Spawner *s, int sig);
/* The last resort of a stop: kill every spawner process (its children become the master's, to be
 * signalled directly), for one that is stopped or stuck cannot pass a signal on. */
void spawner_kill(Spawner *s);
/* Read and act on what every process has reported. Returns how many connections ended. */
unsigned spawner_dispatch(Spawner *s);
/* From the master's waitpid(): true if pid was one of the spawner processes. */
bool spawner_reaped(Spawner *s, pid_t pid, int status);

void spawner_status(const Spawner *s, SpawnerStatus *ret);
