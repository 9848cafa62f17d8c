/* UDP echo, the master's side: the sockets, the workers' spawner, reload, stop, totals and their
 * summaries (udp.h). Each socket's worker process is kept running by udp-supervise.c. */
#include "echod/udp.h"
#include "echod/udp-internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "echod/log.h"
#include "echod/sandbox.h"
#include "echod/spawner.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

struct UdpPlan {
        ListenerPlan listeners;
        Sandbox *sandbox;
        SpawnerProc *proc;
};

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

/* --- setup ----------------------------------------------------------------------------------- */

int udp_new(sd_event *event, const Config *config, Listener **sockets, unsigned n, bool activated, Udp **ret) {
        Udp *u = calloc(1, sizeof(Udp));
        int r = 0;

        if (u) {
                *u = (Udp) { .event = sd_event_ref(event), .config = config, .activated = activated,
                             .generation = 1 };
                u->workers = calloc(n ? n : 1, sizeof(Worker *));
        }
        for (unsigned i = 0; i < n; i++) {
                Worker *w = u && u->workers ? udp_worker_new(u, sockets[i]) : NULL;
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
                udp_worker_free(u->workers[i]);
        free(u->workers);
        /* the channels are closed: the workers are gone or going; the spawner waits for its own */
        spawner_free(u->spawner);
        while (u->handed)
                (void) udp_handed_settled(u, u->handed->slot);
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
                r = spawner_new(u->event, SPAWN_KIND_DATAGRAM, &udp_spawner_callbacks, u, &u->spawner);
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
                                               USEC_PER_SEC / 10, udp_on_watch, u);
        if (r >= 0)
                r = sd_event_source_set_enabled(u->watch_timer, SD_EVENT_ON);
        if (r < 0 || u->n == 0)
                return r;
        r = start_spawner(u);
        if (r < 0)
                return r;
        for (unsigned i = 0; i < u->n; i++)
                udp_worker_start(u->workers[i]);
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
                if (!w && (w = udp_worker_new(u, lp->list[i])))
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
                                udp_worker_free(u->workers[j]);
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
                        udp_worker_start(w);
                else if (resandboxed || udp_worker_send_policy(w) < 0)
                        udp_worker_replace(w, true); /* it is not reading: a new one, with the policy */
        }
}

/* --- stop, reaping, status -------------------------------------------------------------------- */

void udp_stop(Udp *u) {
        u->stopping = true;
        if (u->spawner)
                (void) spawner_drop_queue(u->spawner);
        for (unsigned i = 0; i < u->n; i++)
                udp_worker_detach(u->workers[i]);
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
        if (u->spawner && spawner_reaped(u->spawner, pid, status))
                return true;
        /* a worker whose spawner died is ours to reap */
        return udp_workers_reaped(u, pid, status);
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
