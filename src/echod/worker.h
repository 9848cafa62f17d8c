/* The echo loop: one accepted connection, echoed until the peer is done (RFC 862). */
#pragma once

#include <signal.h>
#include <stdint.h>

#include "shared/timeutil.h"

/* Exit codes say how a connection ended; the master turns them into EXIT_REASON. */
typedef enum WorkerExit {
        WORKER_CLEAN = 0,        /* peer half-closed, everything echoed, FIN sent */
        WORKER_SETUP_FAILED = 1, /* the child could not set itself up */
        WORKER_IDLE_TIMEOUT = 2, /* nothing moved for idle_timeout */
        WORKER_PEER_RESET = 3,   /* the peer reset the connection */
        WORKER_IO_ERROR = 4,     /* any other socket error */
        WORKER_DRAINED = 5,      /* echod stopping: pending echo flushed, FIN sent */
        WORKER_STALL_TIMEOUT = 6, /* the peer stopped reading its echo for stall_timeout */
        WORKER_MAX_SESSION = 7,  /* the connection lived max_session */
        WORKER_MAX_BYTES = 8,    /* max_bytes echoed: the rest is not read, FIN sent */
        _WORKER_EXIT_MAX,
} WorkerExit;

const char *worker_exit_reason(int code);

typedef struct WorkerParams {
        unsigned idle_timeout;  /* seconds without data either way, 0 = none */
        unsigned stall_timeout; /* seconds with echo pending and no write progress, 0 = none */
        unsigned max_session;   /* seconds of lifetime, 0 = none */
        uint64_t max_bytes;     /* bytes echoed, 0 = no limit */
        uint64_t start_usec;    /* worker_now() just before the fork, 0 = read it at start */
} WorkerParams;

/* The worker's clock: CLOCK_MONOTONIC_COARSE, read from the vDSO without touching the TSC (a few
 * ns instead of ~20). Its tick (1–10 ms) is far below the timeouts' one-second unit; the master
 * runs no clock against it. */
static inline uint64_t worker_now(void) {
        return clock_usec(CLOCK_MONOTONIC_COARSE);
}

/* The echo loop on a connected socket (made blocking). Returns a WorkerExit. Once per process.
 * It keeps no shared state: the master reads a connection's byte counts from the kernel. */
int worker_echo(int fd, const WorkerParams *p);
/* Drain: stop reading, echo what is pending, FIN. For a SIGTERM handler (async-signal-safe,
 * installed without SA_RESTART, the signal unblocked): a wait in progress or about to start is
 * cut short, with no race. */
void worker_request_stop(void);
