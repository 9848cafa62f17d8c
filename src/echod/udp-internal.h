/* Inside the UDP module only (udp.c, udp-supervise.c): the Udp, its Workers, and what udp.c takes
 * from udp-supervise.c. No other file includes this: udp.h is the module's interface. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "echod/config.h"
#include "echod/listen.h"
#include "echod/sandbox.h"
#include "echod/spawner.h"
#include "echod/udp.h"

typedef struct Worker {
        Udp *owner;
        Listener *sock;
        int ctl;     /* our end of the control channel; -1: no worker wanted or none started yet */
        int theirs;  /* its end, until the spawner took it (started/failed/lost) */
        int slot;    /* the hand-off's number, while one is out */
        pid_t pid;
        uint64_t started_usec, heard_usec; /* started; last report (its heartbeat) */
        bool killed; /* silent for UDP_SILENT_USEC: killed, its exit replaces it */
        unsigned restarts;
        UdpCounters last; /* what it last reported */
        sd_event_source *io, *restart_timer;
} Worker;

/* A worker that was told to stop (its socket is gone, or echod stops): reaped, then forgotten. */
typedef struct Leaving {
        pid_t pid;
        struct Leaving *next;
} Leaving;

/* The worker end of a channel whose worker was freed (its socket no longer configured) while its
 * hand-off was out: the spawner may still send that descriptor number, so it stays open until
 * the spawner says what became of the hand-off. */
typedef struct Handed {
        int slot, fd;
        struct Handed *next;
} Handed;

struct Udp {
        sd_event *event;
        const Config *config;
        bool activated, stopping, started;
        Sandbox *sandbox;
        Spawner *spawner; /* NULL until there is a socket to serve */
        Worker **workers;
        unsigned n;
        Leaving *leaving;
        Handed *handed;
        uint32_t generation; /* of the policy in force */
        int next_slot;
        UdpTotals totals, summarised;
        sd_event_source *summary_timer, *watch_timer;
};

/* udp-supervise.c: one worker process per socket, from its hand-off to its reaping. */

/* A Worker for sock (taken), with no process yet: udp_worker_start() starts one. NULL: no memory. */
Worker *udp_worker_new(Udp *u, Listener *sock);
/* Detaches it, closes its socket; a hand-off still out keeps its descriptor until settled. */
void udp_worker_free(Worker *w);
/* Hand a new worker to the spawner (not while stopping, nor while one is running or out, nor
 * without a spawner); on failure, retried after the hold-off. */
void udp_worker_start(Worker *w);
/* The worker ended or never started: a new one, at once (quick) or after the hold-off. */
void udp_worker_replace(Worker *w, bool quick);
/* No worker, and none wanted: its channel closed, its pid waited for in the leaving list. */
void udp_worker_detach(Worker *w);
/* The policy in force, to w's channel. Returns 0 or -errno. */
int udp_worker_send_policy(Worker *w);
/* The spawner settled a hand-off of a freed worker: its descriptor can go. True if slot was one. */
bool udp_handed_settled(Udp *u, int slot);
/* The heartbeat check, every second (userdata: the Udp): a worker silent for UDP_SILENT_USEC is
 * killed, and replaced when its exit is seen. */
int udp_on_watch(sd_event_source *s, uint64_t usec, void *userdata);
/* The workers' spawner's callbacks; userdata is the Udp. */
extern const SpawnerCallbacks udp_spawner_callbacks;
/* From udp_reaped(): true if pid was a worker (current, whose spawner died; or leaving). */
bool udp_workers_reaped(Udp *u, pid_t pid, int status);
