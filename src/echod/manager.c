/* The master: sd-event loop, signals, reaping, reload, stop, and STATUS=.
 *
 * Signals are blocked and handled as sd-event sources (signalfd), never in handlers. Children are
 * reaped from one SIGCHLD source with a waitpid(-1, WNOHANG) loop. What happens between accept()
 * and fork() is in accept.c. */
#include "echod/manager.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "build-config.h"
#include "echod/log.h"
#include "echod/manager-internal.h"
#include "echod/notify.h"
#include "echod/worker.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

#define STATUS_INTERVAL_USEC USEC_PER_SEC
#define MAX_LISTENERS (2 * CONFIG_MAX_LISTEN)

uint64_t refused_total(const Counters *c) {
        uint64_t n = 0;
        for (int i = 1; i < _REFUSE_MAX; i++)
                n += c->refused[i];
        return n;
}

static void format_status(Manager *m, char *buf, size_t size) {
        const Counters *c = &m->counters;
        int n = snprintf(buf, size,
                         "%u active (peak %u), %u queued, %llu accepted, %llu refused (capacity %llu, "
                         "per-source %llu, rate %llu, per-source-rate %llu, acl %llu, proxy %llu, fork %llu), "
                         "%llu crashed; listening on",
                         child_table_active(m->children), c->peak, m->queue.n, (unsigned long long) c->accepted,
                         (unsigned long long) refused_total(c), (unsigned long long) c->refused[REFUSE_CAPACITY],
                         (unsigned long long) c->refused[REFUSE_PER_SOURCE],
                         (unsigned long long) c->refused[REFUSE_RATE],
                         (unsigned long long) c->refused[REFUSE_PER_SOURCE_RATE],
                         (unsigned long long) c->refused[REFUSE_ACL], (unsigned long long) c->refused[REFUSE_PROXY],
                         (unsigned long long) c->refused[REFUSE_FORK], (unsigned long long) c->crashed);
        for (unsigned i = 0; i < m->n_listeners && n > 0 && (size_t) n < size; i++) {
                char a[IPADDR_STR_MAX];
                n += snprintf(buf + n, size - (size_t) n, " %s",
                              ipaddr_format_endpoint(&m->listeners[i]->bound, a));
        }
}

static void update_status(Manager *m, bool force) {
        char status[sizeof(m->last_status)];

        format_status(m, status, sizeof(status));
        if (!force && streq(status, m->last_status))
                return;
        memcpy(m->last_status, status, sizeof(status));
        notify_status(status);
        /* what ps(1) shows, as sshd does: "echod: master [3 of 512 connections]" */
        setproctitle("master [%u of %u connections]", child_table_active(m->children),
                     m->config->max_connections);
}

static int on_watchdog_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        notify_watchdog();
        return sd_event_source_set_time(s, usec + m->watchdog_usec / 2);
}

static int on_status_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        update_status(m, false);
        return sd_event_source_set_time(s, usec + STATUS_INTERVAL_USEC);
}

void manager_update_listeners(Manager *m) {
        bool on = !m->stopping && !m->backoff_timer && !m->queue_full;

        for (unsigned i = 0; i < m->n_listeners; i++)
                (void) sd_event_source_set_enabled(m->listeners[i]->source, on ? SD_EVENT_ON : SD_EVENT_OFF);
}

static int attach_listeners(Manager *m) {
        for (unsigned i = 0; i < m->n_listeners; i++) {
                Listener *l = m->listeners[i];
                if (l->source)
                        continue;
                int r = sd_event_add_io(m->event, &l->source, l->fd, EPOLLIN, on_accept, m);
                if (r < 0)
                        return r;
        }
        manager_update_listeners(m); /* new ones may have to start paused */
        return 0;
}

static void log_listeners(Manager *m) {
        for (unsigned i = 0; i < m->n_listeners; i++) {
                char a[IPADDR_STR_MAX];
                log_full(LOG_INFO, 0, MESSAGE_ID_LISTENING, "listening on %s%s%s",
                         ipaddr_format_endpoint(&m->listeners[i]->bound, a),
                         m->listeners[i]->activated ? " (socket-activated)" : "",
                         m->listeners[i]->proxy ? " (PROXY protocol)" : "");
        }
}

/* --- reaping ------------------------------------------------------------------------------- */

void record_exit(Manager *m, pid_t pid, int status) {
        char reason[64];
        uint64_t in, out;
        Child c;
        bool failure;

        if (child_table_release(m->children, pid, &c, &in, &out) < 0)
                return; /* not ours */
        source_table_remove(m->sources, &c.source);
        m->counters.bytes_in += in;
        m->counters.bytes_out += out;

        if (WIFEXITED(status)) {
                int code = WEXITSTATUS(status);
                snprintf(reason, sizeof(reason), "%s", worker_exit_reason(code));
                failure = code == WORKER_SETUP_FAILED || code == WORKER_IO_ERROR || code >= _WORKER_EXIT_MAX;
                if (code == WORKER_SETUP_FAILED)
                        m->counters.crashed++;
        } else {
                int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
                const char *name = sigabbrev_np(sig);
                snprintf(reason, sizeof(reason), "killed-by-SIG%s", name ? name : "?");
                failure = true;
                m->counters.crashed++;
        }
        if (m->config->log_connections || failure)
                log_connection(&(ConnectionRecord) {
                        .peer = c.peer,
                        .via = c.via,
                        .proxied = c.proxied,
                        .local = c.local,
                        .pid = pid,
                        .duration_usec = now_usec() - c.start_usec,
                        .bytes_in = in,
                        .bytes_out = out,
                        .reason = reason,
                        .failure = failure,
                });
}

unsigned reap_children(Manager *m) {
        unsigned n = spawner_read_events(m);
        int status;
        pid_t pid;

        /* ours: the spawner, and its orphans if it died (we are their subreaper) */
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
                if (!spawner_reaped(m, pid, status)) {
                        record_exit(m, pid, status);
                        n++;
                }
        if (n > 0)
                accept_slots_freed(m);
        return n;
}

void children_gone(Manager *m) {
        accept_slots_freed(m);
        if (m->stopping && child_table_active(m->children) == 0)
                (void) sd_event_exit(m->event, 0);
}

static int on_sigchld(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        reap_children(m);
        if (m->stopping && child_table_active(m->children) == 0)
                return sd_event_exit(m->event, 0);
        return 0;
}

/* --- stop ---------------------------------------------------------------------------------- */

static int on_shutdown_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        log_warning("shutdown_timeout (%u s) reached, killing %u remaining connections",
                    m->config->shutdown_timeout, child_table_active(m->children));
        spawner_signal(m, SIGKILL);
        return 0;
}

static void close_listeners(Manager *m) {
        for (unsigned i = 0; i < m->n_listeners; i++)
                listener_free(m->listeners[i]);
        m->n_listeners = 0;
}

static int on_stop_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;
        unsigned active = child_table_active(m->children);
        char status[128];

        if (m->stopping)
                return 0;
        m->stopping = true;
        snprintf(status, sizeof(status), "stopping: draining %u connections", active);
        notify_stopping(status);
        log_info("received SIG%s, stopping: closing listeners, draining %u connections",
                 sigabbrev_np((int) si->ssi_signo) ? sigabbrev_np((int) si->ssi_signo) : "?", active);
        close_listeners(m);
        control_detach(m);
        unsigned dropped = accept_drop_pending(m);
        if (dropped > 0)
                log_info("closed %u connections that were waiting for a PROXY header or a free slot", dropped);
        if (active == 0)
                return sd_event_exit(m->event, 0);

        spawner_signal(m, SIGTERM);
        return sd_event_add_time_relative(m->event, &m->shutdown_timer, CLOCK_MONOTONIC,
                                          (uint64_t) m->config->shutdown_timeout * USEC_PER_SEC, 0,
                                          on_shutdown_timeout, m);
}

/* --- status ---------------------------------------------------------------------------------- */

/* SIGUSR1: the full status into the log (xinetd's habit, without its dump file). */
static int on_status_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        status_log(userdata);
        return 0;
}

/* --- reload -------------------------------------------------------------------------------- */

static int apply_listeners(Manager *m, const Config *c) {
        ListenAddr addrs[MAX_LISTENERS];
        IpAddr failed = { 0 };
        Listener **list = NULL;
        char a[IPADDR_STR_MAX];
        unsigned n;
        int r;

        if (m->activated) {
                /* systemd owns the sockets; only the PROXY requirement can change */
                for (unsigned i = 0; i < m->n_listeners; i++)
                        m->listeners[i]->proxy = c->proxy_protocol;
                return 0;
        }
        n = config_listen_addresses(c, addrs, ELEMENTSOF(addrs));
        r = listeners_update(m->listeners, m->n_listeners, addrs, n, c->backlog, &list, &failed);
        if (r < 0)
                return log_full(LOG_ERR, r, MESSAGE_ID_RELOAD_FAILED,
                                "Failed to reload %s, keeping the old configuration: cannot listen on %s",
                                c->path, ipaddr_format_endpoint(&failed, a));
        for (unsigned i = 0; i < m->n_listeners; i++)
                if (m->listeners[i]) {
                        log_info("no longer listening on %s",
                                 ipaddr_format_endpoint(&m->listeners[i]->bound, a));
                        listener_free(m->listeners[i]);
                }
        free(m->listeners);
        m->listeners = list;
        m->n_listeners = n;
        for (unsigned i = 0; i < n; i++)
                if (!list[i]->source) /* freshly bound: kept ones already have their source */
                        log_full(LOG_INFO, 0, MESSAGE_ID_LISTENING, "listening on %s",
                                 ipaddr_format_endpoint(&list[i]->bound, a));
        r = attach_listeners(m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch listeners");
        return 0;
}

static bool grouping_changed(const Config *a, const Config *b) {
        return a->source_prefix_v4 != b->source_prefix_v4 || a->source_prefix_v6 != b->source_prefix_v6;
}

/* Re-key the per-source counts of live children under the new prefix lengths. */
static void regroup_sources(Manager *m) {
        AdmitLimits limits = manager_limits(m);
        size_t pos = 0;
        const Child *c;

        source_table_clear(m->sources);
        while ((c = child_table_next(m->children, &pos))) {
                Child *mc = (Child *) c;
                admit_source_key(&c->peer, &limits, &mc->source);
                (void) source_table_add(m->sources, &mc->source);
        }
        for (Conn *q = m->queue.head; q; q = q->next) {
                admit_source_key(&q->peer, &limits, &q->source);
                q->counted = source_table_add(m->sources, &q->source) >= 0;
        }
}

static int on_reload_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;
        _cleanup_(freep) char *error = NULL;
        Config *c = NULL;
        int r;

        if (m->stopping)
                return 0;
        notify_reloading();
        r = config_load(m->config->path, &c, &error);
        if (r < 0)
                log_full(LOG_ERR, 0, MESSAGE_ID_RELOAD_FAILED, "Failed to reload, keeping the old configuration: %s",
                         error ? error : strerror(-r));
        else if (apply_listeners(m, c) < 0)
                c = config_free(c);
        else {
                bool regroup = grouping_changed(m->config, c);
                Config *old = m->config;
                m->config = c;
                if (regroup)
                        regroup_sources(m);
                r = accept_apply_config(m, old);
                if (r < 0)
                        log_error_errno(r, "Failed to apply access lists and rates");
                config_free(old);
                m->reloads++;
                m->loaded_realtime = clock_usec(CLOCK_REALTIME);
                log_full(LOG_INFO, 0, MESSAGE_ID_RELOADED, "reloaded configuration from %s", c->path);
        }
        format_status(m, m->last_status, sizeof(m->last_status));
        notify_ready(m->last_status);
        return 0;
}

/* --- setup --------------------------------------------------------------------------------- */

int manager_new(Config *config, Listener **listeners, unsigned n_listeners, bool activated, int control_fd,
                Manager **ret) {
        Manager *m = calloc(1, sizeof(Manager));
        int r;

        if (!m) {
                safe_close(control_fd);
                for (unsigned i = 0; i < n_listeners; i++)
                        listener_free(listeners[i]);
                config_free(config);
                return -ENOMEM;
        }
        m->control_fd = control_fd;
        m->spawner_fd = -1;
        m->started_realtime = m->loaded_realtime = clock_usec(CLOCK_REALTIME);
        m->started_monotonic = now_usec();
        m->config = config;
        m->activated = activated;
        m->listeners = calloc(MAX(n_listeners, 1), sizeof(Listener *));
        if (!m->listeners) {
                for (unsigned i = 0; i < n_listeners; i++)
                        listener_free(listeners[i]);
                manager_free(m);
                return -ENOMEM;
        }
        memcpy(m->listeners, listeners, n_listeners * sizeof(Listener *));
        m->n_listeners = n_listeners;

        r = child_table_new(&m->children);
        if (r >= 0)
                r = source_table_new(&m->sources);
        if (r >= 0)
                r = sd_event_default(&m->event);
        if (r >= 0)
                r = accept_apply_config(m, NULL);
        if (r < 0) {
                manager_free(m);
                return r;
        }
        *ret = m;
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        close_listeners(m);
        control_detach(m);
        notify_close();
        spawner_stop(m);
        free(m->listeners);
        accept_drop_pending(m);
        sd_event_source_unref(m->refusal_timer);
        sd_event_source_unref(m->backoff_timer);
        sd_event_source_unref(m->queue_timer);
        sd_event_source_unref(m->status_timer);
        sd_event_source_unref(m->watchdog_timer);
        sd_event_source_unref(m->shutdown_timer);
        sd_event_unref(m->event);
        child_table_free(m->children);
        source_table_free(m->sources);
        acl_free(m->acl);
        sandbox_free(m->sandbox);
        rate_table_free(m->source_rates);
        config_free(m->config);
        free(m);
        return NULL;
}

int manager_run(Manager *m, void (*ready)(void)) {
        sigset_t mask;
        int r;

        sigemptyset(&mask);
        sigaddset(&mask, SIGCHLD);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGUSR1);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_error_errno(errno, "Failed to block signals");

        sd_event_source *sigchld = NULL;
        if ((r = sd_event_add_signal(m->event, &sigchld, SIGCHLD, on_sigchld, m)) < 0 ||
            (r = sd_event_add_signal(m->event, NULL, SIGHUP, on_reload_signal, m)) < 0 ||
            (r = sd_event_add_signal(m->event, NULL, SIGTERM, on_stop_signal, m)) < 0 ||
            (r = sd_event_add_signal(m->event, NULL, SIGINT, on_stop_signal, m)) < 0 ||
            (r = sd_event_add_signal(m->event, NULL, SIGUSR1, on_status_signal, m)) < 0)
                return log_error_errno(r, "Failed to set up signal handling");
        /* reaping goes before accepting, so freed slots are seen by the next admission */
        (void) sd_event_source_set_priority(sigchld, SD_EVENT_PRIORITY_IMPORTANT);
        (void) sd_event_source_set_floating(sigchld, true);
        sd_event_source_unref(sigchld);
        r = attach_listeners(m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch listeners");
        r = control_attach(m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch the control socket");
        /* should the spawner die, its children (live connections) become ours to reap */
        if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
                return log_error_errno(errno, "Failed to become a subreaper");
        r = spawner_start(m);
        if (r < 0)
                return log_error_errno(r, "Failed to start echod-spawner");
        r = sd_event_add_time_relative(m->event, &m->status_timer, CLOCK_MONOTONIC, STATUS_INTERVAL_USEC,
                                       USEC_PER_SEC / 10, on_status_timer, m);
        if (r < 0)
                return log_error_errno(r, "Failed to set up status timer");
        (void) sd_event_source_set_enabled(m->status_timer, SD_EVENT_ON);
        uint64_t watchdog_usec = 0;
        if (sd_watchdog_enabled(false, &watchdog_usec) > 0 && watchdog_usec > 0) {
                /* our own timer, not sd_event_set_watchdog(): that one pings with a blocking sd_notify() */
                r = sd_event_add_time_relative(m->event, &m->watchdog_timer, CLOCK_MONOTONIC, watchdog_usec / 2,
                                               0, on_watchdog_timer, m);
                if (r >= 0)
                        r = sd_event_source_set_enabled(m->watchdog_timer, SD_EVENT_ON);
                if (r < 0)
                        log_warning_errno(r, "Failed to set up the watchdog, ignoring");
                m->watchdog_usec = watchdog_usec;
        }

        log_listeners(m);
        format_status(m, m->last_status, sizeof(m->last_status));
        notify_ready(m->last_status);
        setproctitle("master [0 of %u connections]", m->config->max_connections);
        log_full(LOG_INFO, 0, MESSAGE_ID_STARTED, "echod %s started: max_connections=%u, max_per_source=%u",
                 PACKAGE_VERSION, m->config->max_connections, m->config->max_per_source);
        if (ready)
                ready();

        r = sd_event_loop(m->event);
        if (r < 0)
                return log_error_errno(r, "Event loop failed");
        log_full(LOG_INFO, 0, MESSAGE_ID_STOPPED, "stopped: %llu connections served, %llu refused",
                 (unsigned long long) m->counters.accepted, (unsigned long long) refused_total(&m->counters));
        return 0;
}
