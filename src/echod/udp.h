/* UDP echo, the master's side: the UDP sockets, one worker process per socket, their policy, their
 * counters, and the log's summaries of what was not answered.
 *
 * Owns: the datagram sockets (bound from listen_udp or passed by systemd; the master keeps each
 * open for as long as it is configured, so a worker's restart or a reload never closes the port:
 * datagrams wait in the socket's queue meanwhile), a spawner of its own whose processes run the
 * datagram sandbox (sandbox.c; started only once there is a UDP socket), and per socket the
 * worker's control channel (udp-proto.h). What a worker reports is its own word about its own
 * socket: the master checks that it only grows, and adds it to totals that outlive the worker.
 *
 * Invariants: at most one worker per socket is current; every current worker was sent the policy
 * in force (or is being replaced). */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "echod/config.h"
#include "echod/listen.h"
#include "echod/udp-channel.h"
#include "echod/udp-proto.h"

/* a worker that ends within this of its start is started again only after it */
#define UDP_RESTART_HOLDOFF_USEC USEC_PER_SEC
/* a worker that sends no report (UDP_REPORT_MAX_USEC apart) for this long is killed and replaced */
#define UDP_SILENT_USEC (5 * USEC_PER_SEC)
/* how often the log says what was not answered, when anything was not */
#define UDP_SUMMARY_USEC (10 * USEC_PER_SEC)

typedef struct Udp Udp;
typedef struct UdpPlan UdpPlan;

typedef struct UdpSocketStatus {
        IpAddr bound;
        bool activated;
        pid_t pid;         /* its worker; 0 while none runs */
        bool current;      /* the worker confirmed the policy in force */
        unsigned restarts; /* workers started after the first */
} UdpSocketStatus;

/* Takes the sockets (adopted or bound at startup). Nothing runs before udp_start(). */
int udp_new(sd_event *event, const Config *config, Listener **sockets, unsigned n, bool activated, Udp **ret);
Udp *udp_free(Udp *u);
/* Start the workers (and their spawner), if there is any socket. Returns 0 or -errno. */
int udp_start(Udp *u);

/* A reload: bind what listen_udp newly asks for (on failure *ret_error names it, nothing changed),
 * and if `sandbox` changes, start a spawner in the new sandbox. */
int udp_prepare(Udp *u, const Config *c, UdpPlan **ret, char **ret_error);
/* Cannot fail: sockets no longer configured are closed with their workers, new ones get a
 * worker, the kept ones' workers are sent the new policy. c must live until the next commit. */
void udp_commit(Udp *u, UdpPlan *p, const Config *c);
void udp_abort(Udp *u, UdpPlan *p);

/* Stopping: every worker is told to stop (its channel closed) and no more are started. */
void udp_stop(Udp *u);
/* The last resort of a stop: kill every worker and its spawner. */
void udp_kill(Udp *u);
/* Workers not yet reaped. */
unsigned udp_live(const Udp *u);

/* Read what the spawner reported. */
void udp_dispatch(Udp *u);
/* From the master's waitpid(): true if pid was one of ours (a spawner, or a worker it left). */
bool udp_reaped(Udp *u, pid_t pid, int status);

/* The invariants above; on a break, *what says which. Returns 0 or -EINVAL. */
int udp_check(const Udp *u, const char **what);

const UdpTotals *udp_totals(const Udp *u);
/* Fills up to max entries; returns how many sockets there are. */
unsigned udp_sockets(const Udp *u, UdpSocketStatus *ret, unsigned max);
