/* UDP echo, the master's side: sockets, workers, policy, counters, summaries (udp.h). */
#include "echod/udp.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "echod/log.h"
#include "echod/sandbox.h"
#include "echod/spawner.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

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

struct UdpPlan {
        ListenerPlan listeners;
        Sandbox *sandbox;
        SpawnerProc *proc;
};

static void worker_start(Worker *w);

static int send_policy(Worker *w) {
        return udp_channel_send_policy(w->ctl, w->owner->config, MAX(w->owner->n, 1u), w->owner->generation);
}

/* A worker no one wants any more (its channel is closed: it exits): waited for, not replaced. */
static void leaving_add(Udp *u, pid_t pid) {
        Leaving *l = calloc(1, sizeof(Leaving));

        if (l) {
                *l = (Leaving) { .pid = pid, .next = u->leaving };
                u->leaving = l;
        }
}

static int on_ctl(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Worker *w = userdata;
        UdpMsg m;
        char a[IPADDR_STR_MAX];

        for (;;) {
                ssize_t n = recv(fd, &m, sizeof(m), MSG_DONTWAIT);
                if (n < 0 && (errno == EAGAIN || errno == EINTR))
                        return 0;
                if (n <= 0) {
                        /* it ended: its exit, reported by the spawner, says how */
                        w->io = sd_event_source_disable_unref(w->io);
                        return 0;
                }
                if (n != sizeof(UdpCounters) || m.type != UDP_MSG_COUNTERS ||
                    !udp_report_plausible(&w->last, &m.counters)) {
                        log_error("UDP worker for %s (pid %d) sent a message that is not a plausible report: "
                                  "replacing it",
                                  ipaddr_format_endpoint(&w->sock->bound, a), (int) w->pid);
                        if (w->pid > 0)
                                (void) kill(w->pid, SIGKILL);
                        w->io = sd_event_source_disable_unref(w->io);
                        return 0;
                }
                udp_totals_add(&w->owner->totals, &w->last, &m.counters);
                w->last = m.counters;
                w->heard_usec = now_usec();
        }
}

static int on_summary(sd_event_source *s, uint64_t usec, void *userdata) {
        Udp *u = userdata;
        const UdpTotals *t = &u->totals;
        char list[512] = "";
        uint64_t dropped = 0;
        size_t len = 0;

        for (unsigned i = 0; i < _UDP_DROP_MAX; i++) {
                uint64_t d = t->dropped[i] - u->summarised.dropped[i];
                if (d == 0)
                        continue;
                dropped += d;
                int k = snprintf(list + len, sizeof(list) - len, "%s%s %llu", len ? ", " : "", udp_drop_name((int) i),
                                 (unsigned long long) d);
                if (k > 0 && (size_t) k < sizeof(list) - len)
                        len += (size_t) k;
        }
        if (dropped > 0)
                log_notice("UDP: %llu datagrams not answered in the last %u s (%s); %llu answered",
                           (unsigned long long) dropped, (unsigned) (UDP_SUMMARY_USEC / USEC_PER_SEC), list,
                           (unsigned long long) (t->replied - u->summarised.replied));
        u->summarised = *t;
        return sd_event_source_set_time(s, usec + UDP_SUMMARY_USEC);
}

/* A worker reports at least every UDP_REPORT_MAX_USEC: one silent for longer than this is
 * stopped or stuck (its socket's queue fills and overflows meanwhile), and is replaced. */
static int on_watch(sd_event_source *s, uint64_t usec, void *userdata) {
        Udp *u = userdata;
        uint64_t now = now_usec();
        char a[IPADDR_STR_MAX];

        for (unsigned i = 0; i < u->n; i++) {
                Worker *w = u->workers[i];
                if (w->pid <= 0 || w->killed || w->ctl < 0 || now - MAX(w->heard_usec, w->started_usec) < UDP_SILENT_USEC)
                        continue;
                log_error("UDP worker for %s (pid %d) reported nothing for %u s: killing it",
                          ipaddr_format_endpoint(&w->sock->bound, a), (int) w->pid,
                          (unsigned) (UDP_SILENT_USEC / USEC_PER_SEC));
                w->killed = true;
                (void) kill(w->pid, SIGKILL);
        }
        return sd_event_source_set_time(s, usec + USEC_PER_SEC);
}

/* --- workers ------------------------------------------------------------------------------- */

static Worker *worker_by_slot(Udp *u, int slot) {
        for (unsigned i = 0; i < u->n; i++)
                if (u->workers[i]->theirs >= 0 && u->workers[i]->slot == slot)
                        return u->workers[i];
        return NULL;
}

static Worker *worker_by_pid(Udp *u, pid_t pid) {
        for (unsigned i = 0; i < u->n; i++)
                if (pid > 0 && u->workers[i]->pid == pid)
                        return u->workers[i];
        return NULL;
}

/* No worker, and none wanted: its channel closed (a running one exits at that), its pid kept in
 * the leaving list until reaped. */
static void worker_detach(Worker *w) {
        Udp *u = w->owner;

        w->io = sd_event_source_disable_unref(w->io);
        w->restart_timer = sd_event_source_disable_unref(w->restart_timer);
        w->ctl = safe_close(w->ctl);
        if (w->pid > 0)
                leaving_add(u, w->pid);
        w->pid = 0;
        w->killed = false;
        w->last = (UdpCounters) { 0 };
}

static void worker_free(Worker *w) {
        Handed *h;

        if (!w)
                return;
        worker_detach(w);
        if (w->theirs >= 0 && (h = calloc(1, sizeof(Handed)))) {
                *h = (Handed) { .slot = w->slot, .fd = TAKE_FD(w->theirs), .next = w->owner->handed };
                w->owner->handed = h;
        }
        w->theirs = safe_close(w->theirs);
        listener_free(w->sock);
        free(w);
}

/* The spawner settled a hand-off of a freed worker: its descriptor can go. True if slot was one. */
static bool handed_settled(Udp *u, int slot) {
        for (Handed **h = &u->handed; *h; h = &(*h)->next)
                if ((*h)->slot == slot) {
                        Handed *done = *h;
                        *h = done->next;
                        safe_close(done->fd);
                        free(done);
                        return true;
                }
        return false;
}

static int on_restart(sd_event_source *s, uint64_t usec, void *userdata) {
        Worker *w = userdata;

        w->restart_timer = sd_event_source_disable_unref(w->restart_timer);
        worker_start(w);
        return 0;
}

/* The worker ended or never started: a new one, at once or after the hold-off. */
static void worker_replace(Worker *w, bool quick) {
        Udp *u = w->owner;

        worker_detach(w);
        if (u->stopping)
                return;
        w->restarts++;
        if (quick)
                worker_start(w);
        else if (sd_event_add_time_relative(u->event, &w->restart_timer, CLOCK_MONOTONIC, UDP_RESTART_HOLDOFF_USEC, 0,
                                            on_restart, w) < 0)
                worker_start(w);
}

static void worker_start(Worker *w) {
        Udp *u = w->owner;
        WorkerParams params = { 0 };
        char title[SPAWN_TITLE_MAX], a[IPADDR_STR_MAX];
        int pair[2], r;

        if (u->stopping || w->ctl >= 0 || w->theirs >= 0 || !u->spawner)
                return;
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
                r = negative_errno();
                goto fail;
        }
        w->ctl = pair[0];
        w->theirs = pair[1];
        /* queued in the channel before the worker exists: it reads them first thing */
        r = udp_channel_send_socket(w->ctl, w->sock->fd);
        if (r >= 0)
                r = send_policy(w);
        if (r >= 0)
                r = sd_event_add_io(u->event, &w->io, w->ctl, EPOLLIN, on_ctl, w);
        if (r < 0)
                goto fail;
        w->slot = u->next_slot;
        u->next_slot = (u->next_slot + 1) % SLOTS_MAX;
        w->started_usec = now_usec();
        snprintf(title, sizeof(title), "echod: udp %s", ipaddr_format_endpoint(&w->sock->bound, a));
        spawner_handoff(u->spawner, w->theirs, w->slot, &params, title);
        return;
fail:
        log_error_errno(r, "Failed to start a UDP worker for %s, retrying in 1 s",
                        ipaddr_format_endpoint(&w->sock->bound, a));
        w->theirs = safe_close(w->theirs);
        worker_replace(w, false);
}

static void worker_ended(Worker *w, int status) {
        char a[IPADDR_STR_MAX];
        bool quick = now_usec() - w->started_usec >= UDP_RESTART_HOLDOFF_USEC;

        if (WIFSIGNALED(status)) {
                const char *sig = sigabbrev_np(WTERMSIG(status));
                log_error("UDP worker for %s (pid %d) was killed by SIG%s; starting another%s",
                          ipaddr_format_endpoint(&w->sock->bound, a), (int) w->pid, sig ? sig : "?",
                          quick ? "" : " in 1 s");
        } else
                log_error("UDP worker for %s (pid %d) exited with status %d; starting another%s",
                          ipaddr_format_endpoint(&w->sock->bound, a), (int) w->pid, WEXITSTATUS(status),
                          quick ? "" : " in 1 s");
        w->pid = 0; /* reaped: not one to wait for */
        worker_replace(w, quick);
}

/* --- the spawner's callbacks ---------------------------------------------------------------- */

static void on_started(void *userdata, int slot, pid_t pid, unsigned spawner) {
        Worker *w = worker_by_slot(userdata, slot);

        if (!w) {
                /* a freed worker's: it finds its channel closed and exits */
                if (handed_settled(userdata, slot))
                        leaving_add(userdata, pid);
                return;
        }
        w->theirs = safe_close(w->theirs);
        /* forked after its channel was closed (a stop, a replacement): it exits at once, and the
         * replacement that waited for this hand-off starts now (not while stopping) */
        if (w->ctl < 0) {
                leaving_add(w->owner, pid);
                worker_start(w);
        } else
                w->pid = pid;
}

static void on_failed(void *userdata, int slot, int error) {
        Worker *w = worker_by_slot(userdata, slot);
        char a[IPADDR_STR_MAX];

        if (!w) {
                (void) handed_settled(userdata, slot);
                return;
        }
        w->theirs = safe_close(w->theirs);
        if (error != -ECANCELED)
                log_error_errno(error, "Failed to fork the UDP worker for %s, retrying in 1 s",
                                ipaddr_format_endpoint(&w->sock->bound, a));
        worker_replace(w, false);
}

static void on_exited(void *userdata, pid_t pid, int status) {
        Udp *u = userdata;
        Worker *w = worker_by_pid(u, pid);

        if (w) {
                worker_ended(w, status);
                return;
        }
        for (Leaving **l = &u->leaving; *l; l = &(*l)->next)
                if ((*l)->pid == pid) {
                        Leaving *gone = *l;
                        *l = gone->next;
                        free(gone);
                        return;
                }
}

/* The spawner died holding it: a worker it forked, if any, exits at the end of the channel. */
static void on_lost(void *userdata, int slot, unsigned spawner) {
        Worker *w = worker_by_slot(userdata, slot);

        if (!w) {
                (void) handed_settled(userdata, slot);
                return;
        }
        w->theirs = safe_close(w->theirs);
        worker_replace(w, false);
}

static void on_gone(void *userdata, unsigned spawner, pid_t pid, int status, bool retired) {
        if (!retired)
                log_error("the UDP workers' echod-spawner (pid %d) ended; its workers go on", (int) pid);
}

static void on_restarted(void *userdata, pid_t pid, int error) {
        if (error < 0)
                log_error_errno(error, "Failed to start the UDP workers' echod-spawner, retrying in 1 s");
}

static void on_stuck(void *userdata, pid_t pid, uint64_t stalled_usec, unsigned waiting) {
        log_error("the UDP workers' echod-spawner (pid %d) was stuck or stopped for %llu s: killing it", (int) pid,
                  (unsigned long long) (stalled_usec / USEC_PER_SEC));
}

static const SpawnerCallbacks spawner_cb = {
        .started = on_started,
        .failed = on_failed,
        .exited = on_exited,
        .gone = on_gone,
        .lost = on_lost,
        .restarted = on_restarted,
        .stuck = on_stuck,
};

/* --- setup ----------------------------------------------------------------------------------- */

static Worker *worker_new(Udp *u, Listener *sock) {
        Worker *w = calloc(1, sizeof(Worker));

        if (w)
                *w = (Worker) { .owner = u, .sock = sock, .ctl = -1, .theirs = -1 };
        return w;
}

int udp_new(sd_event *event, const Config *config, Listener **sockets, unsigned n, bool activated, Udp **ret) {
        Udp *u = calloc(1, sizeof(Udp));
        int r = 0;

        if (u) {
                *u = (Udp) { .event = sd_event_ref(event), .config = config, .activated = activated,
                             .generation = 1 };
                u->workers = calloc(n ? n : 1, sizeof(Worker *));
        }
        for (unsigned i = 0; i < n; i++) {
                Worker *w = u && u->workers ? worker_new(u, sockets[i]) : NULL;
                if (!w) {
                        listener_free(sockets[i]);
                        r = -ENOMEM;
                        continue;
                }
                u->workers[u->n++] = w;
        }
        free(sockets);
        if (!u || !u->workers || r < 0) {
                udp_free(u);
                return -ENOMEM;
        }
        *ret = u;
        return 0;
}

Udp *udp_free(Udp *u) {
        if (!u)
                return NULL;
        for (unsigned i = 0; i < u->n; i++)
                worker_free(u->workers[i]);
        free(u->workers);
        /* the channels are closed: the workers are gone or going; the spawner waits for its own */
        spawner_free(u->spawner);
        while (u->handed)
                (void) handed_settled(u, u->handed->slot);
        sandbox_free(u->sandbox);
        while (u->leaving) {
                Leaving *l = u->leaving;
                u->leaving = l->next;
                free(l);
        }
        sd_event_source_disable_unref(u->summary_timer);
        sd_event_source_disable_unref(u->watch_timer);
        sd_event_unref(u->event);
        free(u);
        return NULL;
}

static int start_spawner(Udp *u) {
        int r;

        if (u->spawner)
                return 0;
        r = sandbox_new(u->config->sandbox, SPAWN_KIND_DATAGRAM, &u->sandbox);
        if (r >= 0)
                r = spawner_new(u->event, SPAWN_KIND_DATAGRAM, &spawner_cb, u, &u->spawner);
        if (r >= 0)
                r = spawner_start(u->spawner, u->sandbox);
        if (r < 0) {
                u->spawner = spawner_free(u->spawner);
                u->sandbox = sandbox_free(u->sandbox);
        }
        return r;
}

int udp_start(Udp *u) {
        int r;

        u->started = true;
        r = sd_event_add_time_relative(u->event, &u->summary_timer, CLOCK_MONOTONIC, UDP_SUMMARY_USEC,
                                       USEC_PER_SEC / 10, on_summary, u);
        if (r >= 0)
                r = sd_event_source_set_enabled(u->summary_timer, SD_EVENT_ON);
        if (r >= 0)
                r = sd_event_add_time_relative(u->event, &u->watch_timer, CLOCK_MONOTONIC, USEC_PER_SEC,
                                               USEC_PER_SEC / 10, on_watch, u);
        if (r >= 0)
                r = sd_event_source_set_enabled(u->watch_timer, SD_EVENT_ON);
        if (r < 0 || u->n == 0)
                return r;
        r = start_spawner(u);
        if (r < 0)
                return r;
        for (unsigned i = 0; i < u->n; i++)
                worker_start(u->workers[i]);
        return 0;
}

/* --- reload ---------------------------------------------------------------------------------- */

int udp_prepare(Udp *u, const Config *c, UdpPlan **ret, char **ret_error) {
        ListenAddr addrs[2 * CONFIG_MAX_LISTEN];
        Listener *old[2 * CONFIG_MAX_LISTEN];
        unsigned n = config_udp_addresses(c, addrs, ELEMENTSOF(addrs));
        UdpPlan *p = calloc(1, sizeof(UdpPlan));
        char a[IPADDR_STR_MAX];
        int r;

        if (!p)
                return -ENOMEM;
        for (unsigned i = 0; i < u->n; i++)
                old[i] = u->workers[i]->sock;
        if (u->activated)
                r = listeners_prepare_activated(old, u->n, false, &p->listeners);
        else
                r = listeners_prepare(old, u->n, addrs, n, 0, &p->listeners);
        if (r < 0) {
                if (asprintf(ret_error, "cannot listen on UDP %s: %s",
                             ipaddr_format_endpoint(&p->listeners.failed, a), strerror(-r)) < 0)
                        *ret_error = NULL;
                free(p);
                return r;
        }
        /* a spawner in the new sandbox, for the workers started from the commit on */
        if (u->spawner && c->sandbox != u->config->sandbox) {
                r = sandbox_new(c->sandbox, SPAWN_KIND_DATAGRAM, &p->sandbox);
                if (r >= 0)
                        r = spawner_prepare(u->spawner, p->sandbox, &p->proc);
                if (r < 0) {
                        if (asprintf(ret_error, "cannot start the UDP workers' echod-spawner with sandbox = %s: %s",
                                     c->sandbox ? "true" : "false", strerror(-r)) < 0)
                                *ret_error = NULL;
                        udp_abort(u, p);
                        return r;
                }
        }
        *ret = p;
        return 0;
}

void udp_abort(Udp *u, UdpPlan *p) {
        if (!p)
                return;
        listeners_abort(&p->listeners);
        /* the spawner started in the new sandbox is retired unused; then its sandbox can go */
        if (p->proc)
                spawner_abort(u->spawner, p->proc);
        sandbox_free(p->sandbox);
        free(p);
}

void udp_commit(Udp *u, UdpPlan *p, const Config *c) {
        ListenerPlan *lp = &p->listeners;
        Worker **workers = calloc(lp->n ? lp->n : 1, sizeof(Worker *));
        unsigned n = 0;
        char a[IPADDR_STR_MAX];

        u->config = c;
        u->generation++;
        if (!workers) {
                /* nothing can fail here: keep the sockets and workers, send the new limits */
                listeners_abort(lp);
                lp->n = 0;
        }
        /* the workers of kept sockets carry over; those of sockets no longer asked for stop */
        for (unsigned i = 0; workers && i < lp->n; i++) {
                Worker *w = NULL;
                for (unsigned j = 0; j < u->n && !w; j++)
                        if (u->workers[j] && u->workers[j]->sock == lp->list[i]) {
                                w = u->workers[j];
                                u->workers[j] = NULL;
                        }
                if (!w && (w = worker_new(u, lp->list[i])))
                        log_full(LOG_INFO, 0, MESSAGE_ID_LISTENING, "listening on UDP %s",
                                 ipaddr_format_endpoint(&lp->list[i]->bound, a));
                if (w)
                        workers[n++] = w;
                else
                        listener_free(lp->list[i]);
        }
        if (workers) {
                for (unsigned j = 0; j < u->n; j++)
                        if (u->workers[j]) {
                                log_info("no longer listening on UDP %s",
                                         ipaddr_format_endpoint(&u->workers[j]->sock->bound, a));
                                worker_free(u->workers[j]);
                        }
                free(u->workers);
                u->workers = workers;
                u->n = n;
                free(lp->list);
                free(lp->proxy);
                free(lp->fresh);
        }
        bool resandboxed = p->proc != NULL;
        if (p->proc) {
                spawner_commit(u->spawner, p->proc, p->sandbox);
                sandbox_free(u->sandbox);
                u->sandbox = TAKE_PTR(p->sandbox);
        }
        free(p);

        if (!u->started)
                return;
        if (u->n > 0 && start_spawner(u) < 0)
                log_error("Failed to start the UDP workers' echod-spawner: UDP echo is not served");
        /* every worker gets the new policy (the budget's share changes with the count); in a new
         * sandbox, a new worker from the new spawner (the socket stays open meanwhile) */
        for (unsigned i = 0; i < u->n; i++) {
                Worker *w = u->workers[i];
                if (w->ctl < 0)
                        worker_start(w);
                else if (resandboxed || send_policy(w) < 0)
                        worker_replace(w, true); /* it is not reading: a new one, with the policy */
        }
}

/* --- stop, reaping, status -------------------------------------------------------------------- */

void udp_stop(Udp *u) {
        u->stopping = true;
        if (u->spawner)
                (void) spawner_drop_queue(u->spawner);
        for (unsigned i = 0; i < u->n; i++)
                worker_detach(u->workers[i]);
}

void udp_kill(Udp *u) {
        if (u->spawner) {
                spawner_signal(u->spawner, SIGKILL);
                spawner_kill(u->spawner);
        }
        for (Leaving *l = u->leaving; l; l = l->next)
                (void) kill(l->pid, SIGKILL);
}

unsigned udp_live(const Udp *u) {
        unsigned n = 0;

        for (unsigned i = 0; i < u->n; i++)
                n += u->workers[i]->pid > 0;
        for (const Leaving *l = u->leaving; l; l = l->next)
                n++;
        return n;
}

void udp_dispatch(Udp *u) {
        if (u->spawner)
                (void) spawner_dispatch(u->spawner);
}

bool udp_reaped(Udp *u, pid_t pid, int status) {
        Worker *w;

        if (u->spawner && spawner_reaped(u->spawner, pid, status))
                return true;
        /* a worker whose spawner died is ours to reap */
        w = worker_by_pid(u, pid);
        if (w) {
                worker_ended(w, status);
                return true;
        }
        for (Leaving *l = u->leaving; l; l = l->next)
                if (l->pid == pid) {
                        on_exited(u, pid, status);
                        return true;
                }
        return false;
}

int udp_check(const Udp *u, const char **what) {
        for (unsigned i = 0; i < u->n; i++) {
                const Worker *w = u->workers[i];
                /* a hand-off still out has no process yet; a process has its channel (until detached) */
                if (w->theirs >= 0 && w->pid > 0) {
                        *what = "a UDP worker with a pid while its hand-off is still out";
                        return -EINVAL;
                }
                if (w->pid > 0 && w->ctl < 0) {
                        *what = "a current UDP worker without its control channel";
                        return -EINVAL;
                }
                for (unsigned j = 0; j < i; j++)
                        if (w->pid > 0 && u->workers[j]->pid == w->pid) {
                                *what = "two UDP sockets with the same worker";
                                return -EINVAL;
                        }
                for (const Leaving *l = u->leaving; l; l = l->next)
                        if (w->pid > 0 && l->pid == w->pid) {
                                *what = "a UDP worker both current and leaving";
                                return -EINVAL;
                        }
        }
        return 0;
}

const UdpTotals *udp_totals(const Udp *u) {
        return &u->totals;
}

unsigned udp_sockets(const Udp *u, UdpSocketStatus *ret, unsigned max) {
        for (unsigned i = 0; i < u->n && i < max; i++) {
                const Worker *w = u->workers[i];
                ret[i] = (UdpSocketStatus) { .bound = w->sock->bound, .activated = w->sock->activated, .pid = w->pid,
                                             .current = w->pid > 0 && w->last.generation == u->generation,
                                             .restarts = w->restarts };
        }
        return u->n;
}
