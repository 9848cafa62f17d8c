/* The master ↔ spawner protocol: messages on one SOCK_SEQPACKET socketpair.
 *
 * The master accepts, admits and accounts; echod-spawner, a small static program the master
 * starts once, forks the child for each connection handed to it. A fork copies the forking
 * process's address space, so forking from a process with a dozen mappings instead of the
 * master's eighty (libsystemd and its dependencies, libconfuse, the master's tables) is what
 * makes a connection cheap. Both ends are built from this header in one tree: no versioning. */
#pragma once

#include <linux/filter.h>
#include <signal.h>
#include <stdint.h>

#include "echod/worker.h"

/* the spawner's end of the socketpair, as the spawner sees it */
#define SPAWN_FD_SOCKET 3
/* slot numbers run below this: one per connection max_connections allows */
#define SLOTS_MAX 262144

/* the child's process title ("echod: PEER") fits in the spawner's argument area */
#define SPAWN_TITLE_MAX 64
/* a filter longer than this is refused by the spawner (ours is about 60 instructions) */
#define SPAWN_FILTER_MAX 512

typedef enum SpawnRequestType {
        SPAWN_CONNECTION = 1, /* + SCM_RIGHTS: the connection; fork a child for it */
        SPAWN_SANDBOX,        /* first, and once: the spawner enters the sandbox its children inherit */
} SpawnRequestType;

/* What a child forked for a hand-off runs. */
typedef enum SpawnKind {
        SPAWN_KIND_CONNECTION = 0, /* the fd is a TCP connection: the echo loop (worker.c) */
        SPAWN_KIND_DATAGRAM = 1,   /* the fd is a UDP worker's control channel (udp-worker.c) */
} SpawnKind;

typedef struct SpawnConnection {
        uint32_t type;
        uint32_t slot; /* the master's number for the connection, below SLOTS_MAX */
        uint32_t kind; /* SpawnKind */
        WorkerParams params;
        char title[SPAWN_TITLE_MAX]; /* NUL-terminated */
} SpawnConnection;

typedef struct SpawnSandbox {
        uint32_t type;
        uint32_t enabled;    /* 0: sandbox = false, no filter and no limits */
        uint32_t filter_len; /* instructions in filter[] */
        uint32_t spare;      /* 1: keep a child forked ahead of need (spawner-main.c) */
        struct sock_filter filter[SPAWN_FILTER_MAX];
} SpawnSandbox;

typedef union SpawnRequest {
        uint32_t type;
        SpawnConnection connection;
        SpawnSandbox sandbox;
} SpawnRequest;

/* spawner → master: one datagram carries up to SPAWN_EVENTS_MAX events, in order */
typedef enum SpawnEventType {
        SPAWN_STARTED = 1, /* slot's child is pid */
        SPAWN_FAILED,      /* no child for slot: value is -errno from fork(); the connection is closed */
        SPAWN_EXITED,      /* pid ended: value is its wait status */
} SpawnEventType;

typedef struct SpawnEvent {
        uint32_t type;
        uint32_t slot; /* STARTED, FAILED */
        int32_t pid;   /* STARTED, EXITED */
        int32_t value;
} SpawnEvent;

#define SPAWN_EVENTS_MAX 256

/* Blocked in the spawner from its exec on (the master's posix_spawn() sets them) and all its life;
 * a child unblocks SIGTERM (its drain). SIGCHLD goes to the spawner's signalfd. */
static const int spawner_blocked_signals[] = { SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP };

/* the spawner's exit statuses besides 0 (the master closed the socket) */
#define SPAWN_EXIT_SETUP 1   /* not started by echod, or out of memory at start */
#define SPAWN_EXIT_SANDBOX 2 /* the seccomp filter or a limit could not be applied */
