/* The master's state, shared by manager.c (loop, signals, reaping, reload, stop) and accept.c
 * (accept → PROXY header → admission → queue or fork). Nothing else includes this. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "echod/acl.h"
#include "echod/admit.h"
#include "echod/children.h"
#include "echod/config.h"
#include "echod/listen.h"
#include "echod/ratelimit.h"
#include "echod/sandbox.h"

/* An accepted connection not yet handed to a child: waiting for its PROXY header, or queued
 * because echod is at capacity (at_capacity = queue). */
typedef struct Conn {
        struct Manager *manager;
        int fd;
        IpAddr peer;   /* the client: the PROXY header's source, or the socket peer */
        IpAddr via;    /* the socket peer (the load balancer, if proxied) */
        bool proxied;  /* peer came from a PROXY header */
        IpAddr local;
        IpAddr source; /* per-source key, set at admission */
        bool counted;  /* holds a count in the source table (while queued) */
        uint64_t since;
        sd_event_source *io, *timer; /* while waiting for a PROXY header */
        uint8_t *header;             /* ...and the part of it already read */
        size_t header_len;
        int slot;                    /* handed over: waiting in Manager.handoff for the spawner */
        struct Conn *prev, *next;
} Conn;

typedef struct ConnList {
        Conn *head, *tail;
        unsigned n;
} ConnList;

typedef struct Counters {
        uint64_t accepted;
        uint64_t refused[_REFUSE_MAX];
        uint64_t crashed; /* children that died from a signal or failed setup */
        uint64_t bytes_in, bytes_out;
        unsigned peak;
} Counters;

typedef struct Manager {
        sd_event *event;
        Config *config;
        Listener **listeners;
        unsigned n_listeners;
        bool activated;
        ChildTable *children;
        SourceTable *sources;
        Acl *acl;
        Sandbox *sandbox;
        TokenBucket rate;
        RateTable *source_rates;
        ConnList proxy_pending;
        ConnList queue;
        bool queue_full;
        ConnList handoff; /* admitted, slot taken, not yet sent to the spawner */
        /* echod-spawner (spawner.c) */
        pid_t spawner_pid;
        int spawner_fd;
        sd_event_source *spawner_io;
        sd_event_source *restart_timer;
        uint64_t spawner_started_usec;
        bool spawner_retiring; /* told to finish and exit; hand-offs wait for the next one */
        Counters counters;
        RefusalWindow refusal_windows[_REFUSE_MAX];
        sd_event_source *refusal_timer;
        sd_event_source *backoff_timer;
        sd_event_source *queue_timer;
        sd_event_source *status_timer;
        sd_event_source *watchdog_timer;
        uint64_t watchdog_usec;
        sd_event_source *shutdown_timer;
        bool stopping;
        char last_status[512];
        /* for the status report */
        uint64_t started_realtime, started_monotonic, loaded_realtime;
        unsigned reloads;
        RefusalTop refused_sources;
        int control_fd;
        sd_event_source *control_source;
        unsigned n_control;
} Manager;

/* accept.c */
void list_append(ConnList *l, Conn *c);
void list_remove(ConnList *l, Conn *c);
void conn_free(Conn *c);
/* The spawner could not fork slot's child (or the hand-off was dropped: -ECANCELED): free the
 * slot, take back "accepted", and count a refusal. */
void accept_spawn_failed(Manager *m, int slot, int error);
int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata);
/* Children went away: hand queued connections to free slots. */
void accept_slots_freed(Manager *m);
/* The configuration was swapped: rebuild access lists and rate state. Returns 0 or -ENOMEM. */
int accept_apply_config(Manager *m, const Config *old);
/* Stopping: close every connection not yet handed to a child. Returns how many. */
unsigned accept_drop_pending(Manager *m);
AdmitLimits manager_limits(const Manager *m);

/* control.c: the status socket's server side */
int control_attach(Manager *m);
void control_detach(Manager *m);

/* status.c: the report, as text (aligned columns) or JSON, in a malloc'd buffer */
int status_format(Manager *m, bool json, char **ret, size_t *ret_len);
/* SIGUSR1: the report into the log, one line per line (live connections capped) */
void status_log(Manager *m);

/* manager.c */
uint64_t refused_total(const Counters *c);
/* Listeners are on unless stopping, backing off after EMFILE, or the queue is full. */
void manager_update_listeners(Manager *m);
/* Collect every exited child (spawner events, our own waitpid) and give freed slots to queued
 * connections; returns how many. */
unsigned reap_children(Manager *m);
void record_exit(Manager *m, pid_t pid, int status);
/* After exits: free slots go to the queue, and a drain may be complete. */
void children_gone(Manager *m);

/* spawner.c */
int spawner_start(Manager *m);
/* At exit: close the socket (the spawner exits) and reap it. */
void spawner_stop(Manager *m);
/* The sandbox changed: the spawner finishes the hand-offs it has and exits; a new one, in the
 * new sandbox, takes the next. Its running children go on in the old one, adopted. */
void spawner_retire(Manager *m);
/* Hand c (slot committed) to the spawner, now or when its socket has room. Takes c. */
void spawner_handoff(Manager *m, Conn *c);
/* Stopping: close the hand-offs not yet sent. */
void spawner_drop_handoff(Manager *m);
/* Every live child gets sig (through the spawner; adopted ones directly). */
void spawner_signal(Manager *m, int sig);
/* Handle queued STARTED/FAILED/EXITED events; returns how many children went away. */
unsigned spawner_read_events(Manager *m);
/* From the master's waitpid loop: true if pid was the spawner (its children are adopted, a new one
 * is started unless stopping). */
bool spawner_reaped(Manager *m, pid_t pid, int status);
