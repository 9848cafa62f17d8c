/* The UDP workers, the master's side: one process per socket, kept running. Each is handed to the
 * workers' spawner with its end of a control channel (the socket and the policy queued in it
 * first), its reports are checked and added up, one silent for UDP_SILENT_USEC is killed, and one
 * that ends is replaced (after a hold-off if it died young); the spawner's callbacks settle each
 * hand-off. Part of the UDP module (udp-internal.h): udp.c owns the sockets, the spawner, reload
 * and stop, and calls in here; nothing here calls back into udp.c. */
#include "echod/udp-internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "echod/log.h"
#include "echod/spawner.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

int udp_worker_send_policy(Worker *w) {
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

/* A worker reports at least every UDP_REPORT_MAX_USEC: one silent for longer than this is
 * stopped or stuck (its socket's queue fills and overflows meanwhile), and is replaced. */
int udp_on_watch(sd_event_source *s, uint64_t usec, void *userdata) {
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
void udp_worker_detach(Worker *w) {
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

void udp_worker_free(Worker *w) {
        Handed *h;

        if (!w)
                return;
        udp_worker_detach(w);
        if (w->theirs >= 0 && (h = calloc(1, sizeof(Handed)))) {
                *h = (Handed) { .slot = w->slot, .fd = TAKE_FD(w->theirs), .next = w->owner->handed };
                w->owner->handed = h;
        }
        w->theirs = safe_close(w->theirs);
        listener_free(w->sock);
        free(w);
}

/* The spawner settled a hand-off of a freed worker: its descriptor can go. True if slot was one. */
bool udp_handed_settled(Udp *u, int slot) {
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
        udp_worker_start(w);
        return 0;
}

/* The worker ended or never started: a new one, at once or after the hold-off. */
void udp_worker_replace(Worker *w, bool quick) {
        Udp *u = w->owner;

        udp_worker_detach(w);
        if (u->stopping)
                return;
        w->restarts++;
        if (quick)
                udp_worker_start(w);
        else if (sd_event_add_time_relative(u->event, &w->restart_timer, CLOCK_MONOTONIC, UDP_RESTART_HOLDOFF_USEC, 0,
                                            on_restart, w) < 0)
                udp_worker_start(w);
}

void udp_worker_start(Worker *w) {
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
                r = udp_worker_send_policy(w);
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
        udp_worker_replace(w, false);
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
        udp_worker_replace(w, quick);
}

/* --- the spawner's callbacks ---------------------------------------------------------------- */

static void on_started(void *userdata, int slot, pid_t pid, unsigned spawner) {
        Worker *w = worker_by_slot(userdata, slot);

        if (!w) {
                /* a freed worker's: it finds its channel closed and exits */
                if (udp_handed_settled(userdata, slot))
                        leaving_add(userdata, pid);
                return;
        }
        w->theirs = safe_close(w->theirs);
        /* forked after its channel was closed (a stop, a replacement): it exits at once, and the
         * replacement that waited for this hand-off starts now (not while stopping) */
        if (w->ctl < 0) {
                leaving_add(w->owner, pid);
                udp_worker_start(w);
        } else
                w->pid = pid;
}

static void on_failed(void *userdata, int slot, int error) {
        Worker *w = worker_by_slot(userdata, slot);
        char a[IPADDR_STR_MAX];

        if (!w) {
                (void) udp_handed_settled(userdata, slot);
                return;
        }
        w->theirs = safe_close(w->theirs);
        if (error != -ECANCELED)
                log_error_errno(error, "Failed to fork the UDP worker for %s, retrying in 1 s",
                                ipaddr_format_endpoint(&w->sock->bound, a));
        udp_worker_replace(w, false);
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
                (void) udp_handed_settled(userdata, slot);
                return;
        }
        w->theirs = safe_close(w->theirs);
        udp_worker_replace(w, false);
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

const SpawnerCallbacks udp_spawner_callbacks = {
        .started = on_started,
        .failed = on_failed,
        .exited = on_exited,
        .gone = on_gone,
        .lost = on_lost,
        .restarted = on_restarted,
        .stuck = on_stuck,
};

Worker *udp_worker_new(Udp *u, Listener *sock) {
        Worker *w = calloc(1, sizeof(Worker));

        if (w)
                *w = (Worker) { .owner = u, .sock = sock, .ctl = -1, .theirs = -1 };
        return w;
}

bool udp_workers_reaped(Udp *u, pid_t pid, int status) {
        Worker *w = worker_by_pid(u, pid);

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
