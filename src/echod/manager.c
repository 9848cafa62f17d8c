/* The master: the event loop, signals, reaping, reload (prepare, then commit), stop, STATUS=.
 *
 * Owns the modules and wires their callbacks: accept (admission) → children (accounting) →
 * spawner (processes). The callbacks, and the connection records they log from what children
 * returns, are in manager-connections.c. Signals are handled as sd-event sources (signalfd), never
 * in handlers. Freed slots are announced to accept (accept_slots_freed()), whose wait queue runs
 * after the event batch. After every event batch a post source ends a finished drain and, in an
 * invariants build, checks every module's invariants. */
#include "echod/manager.h"
#include "echod/manager-internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "build-config.h"
#include "echod/accept.h"
#include "echod/children.h"
#include "echod/control.h"
#include "echod/log.h"
#include "echod/notify.h"
#include "echod/sandbox.h"
#include "echod/spawn-proto.h"
#include "echod/spawner.h"
#include "echod/status.h"
#include "echod/udp.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

#define STATUS_INTERVAL_USEC USEC_PER_SEC

/* --- reaping --------------------------------------------------------------------------------- */

static int on_sigchld(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;
        int status;
        pid_t pid;

        /* first what the spawners reported, so every STARTED is known before its process's end */
        (void) spawner_dispatch(m->spawner);
        udp_dispatch(m->udp);
        /* ours: the spawners, and the orphans of one that died (we are their subreaper) */
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
                if (!spawner_reaped(m->spawner, pid, status) && !udp_reaped(m->udp, pid, status))
                        manager_child_exited(m, pid, status);
        return 0;
}

/* --- STATUS= and the watchdog ---------------------------------------------------------------- */

static StatusSources sources(const Manager *m);

static void format_status(Manager *m, char *buf, size_t size) {
        StatusSources src = sources(m);
        status_summary(&src, buf, size);
}

static void update_status(Manager *m, bool force) {
        char status[sizeof(m->last_status)];

        format_status(m, status, sizeof(status));
        if (!force && streq(status, m->last_status))
                return;
        memcpy(m->last_status, status, sizeof(status));
        notify_status(status);
        /* what ps(1) shows, as sshd does: "echod: master [3 of 512 connections]" */
        setproctitle("master [%u of %u connections]", children_active(m->children), m->config->max_connections);
}

static int on_watchdog_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        notify_watchdog();
        return sd_event_source_set_time(s, usec + m->watchdog_usec / 2);
}

static int on_status_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        update_status(userdata, false);
        return sd_event_source_set_time(s, usec + STATUS_INTERVAL_USEC);
}

/* --- status ---------------------------------------------------------------------------------- */

static StatusSources sources(const Manager *m) {
        return (StatusSources) {
                .config = m->config,
                .children = m->children,
                .accept = m->accept,
                .spawner = m->spawner,
                .udp = m->udp,
                .started_realtime = m->started_realtime,
                .started_monotonic = m->started_monotonic,
                .loaded_realtime = m->loaded_realtime,
                .reloads = m->reloads,
                .reload_failures = m->reload_failures,
        };
}

static int report(void *userdata, StatusFormat format, char **ret, size_t *ret_len) {
        StatusSources src = sources(userdata);
        return status_report(&src, format, UINT32_MAX, ret, ret_len);
}

/* SIGUSR1: the full status into the log (xinetd's habit, without its dump file). */
static int on_status_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;
        _cleanup_(freep) char *text = NULL;
        StatusSources src = sources(m);
        size_t len;

        if (status_report(&src, STATUS_TEXT, 50, &text, &len) < 0)
                return 0;
        for (char *line = text, *nl; line && *line; line = nl ? nl + 1 : NULL) {
                nl = strchr(line, '\n');
                if (nl)
                        *nl = 0;
                if (*line)
                        log_info("status: %s", line);
        }
        return 0;
}

/* --- stop ------------------------------------------------------------------------------------ */

/* Every live connection gets sig: through its spawner, or directly if it is ours (adopted: we
 * reap it, so its pid cannot have been reused). */
static void signal_children(Manager *m, int sig) {
        size_t pos = 0;
        const Child *c;

        m->stop_signal = sig;
        spawner_signal(m->spawner, sig);
        while ((c = children_next(m->children, &pos, NULL)))
                if (c->adopted && c->pid > 0)
                        (void) kill(c->pid, sig);
}

static int on_shutdown_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        log_warning("shutdown_timeout (%u s) reached, killing %u remaining connections",
                    m->config->shutdown_timeout, children_active(m->children));
        signal_children(m, SIGKILL);
        /* a spawner that is stopped or stuck passes nothing on: its children become ours, and are
         * killed as they are adopted */
        spawner_kill(m->spawner);
        udp_kill(m->udp);
        (void) accept_drop_headers(m->accept);
        return 0;
}

static int on_stop_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;
        const char *name = sigabbrev_np((int) si->ssi_signo);
        char status[128];
        int r;

        if (m->stopping)
                return 0;
        m->stopping = true;
        /* armed first: whatever follows, the stop has its deadline */
        r = sd_event_add_time_relative(m->event, &m->shutdown_timer, CLOCK_MONOTONIC,
                                       (uint64_t) m->config->shutdown_timeout * USEC_PER_SEC, 0, on_shutdown_timeout,
                                       m);
        if (r < 0)
                log_warning_errno(r, "Failed to arm the shutdown timer");
        unsigned dropped = accept_stop(m->accept);
        dropped += spawner_drop_queue(m->spawner);
        udp_stop(m->udp);
        m->control = control_free(m->control);
        unsigned active = children_active(m->children);
        snprintf(status, sizeof(status), "stopping: draining %u connections", active);
        notify_stopping(status);
        log_info("received SIG%s, stopping: closing listeners, draining %u connections", name ? name : "?", active);
        if (dropped > 0)
                log_info("closed %u connections that were waiting for a free slot or a spawner",
                         dropped);
        signal_children(m, SIGTERM);
        return 0;
}

/* --- reload ---------------------------------------------------------------------------------- */

/* The open files this process may have: the hard limit (main() raised the soft one to it at start;
 * a soft limit lowered since, by prlimit(1), is not the configuration's business). */
static uint64_t nofile_limit(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_max == RLIM_INFINITY)
                return UINT64_MAX;
        return (uint64_t) rl.rlim_max;
}

static void reload_failed(Manager *m, const char *what) {
        m->reload_failures++;
        log_full(LOG_ERR, 0, MESSAGE_ID_RELOAD_FAILED, "Failed to reload, keeping the old configuration: %s", what);
}

static int on_reload_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;
        _cleanup_(freep) char *error = NULL;
        _cleanup_(config_freep) Config *c = NULL;
        AcceptPlan *plan = NULL;
        UdpPlan *udp_plan = NULL;
        Sandbox *sandbox = NULL;
        SpawnerProc *proc = NULL;
        AcceptChanges changes;
        char a[IPADDR_STR_MAX];
        int r;

        if (m->stopping)
                return 0;
        notify_reloading();

        /* prepare: everything the new configuration needs, built beside what runs */
        r = config_load(m->config->path, &c, &error);
        if (r < 0) {
                reload_failed(m, error ? error : strerror(-r));
                goto done;
        }
        r = config_check_nofile(c, nofile_limit(), &error);
        if (r < 0) {
                reload_failed(m, error ? error : strerror(-r));
                goto done;
        }
        r = accept_prepare(m->accept, c, &plan, &error);
        if (r < 0) {
                reload_failed(m, error ? error : strerror(-r));
                goto done;
        }
        r = udp_prepare(m->udp, c, &udp_plan, &error);
        if (r < 0) {
                reload_failed(m, error ? error : strerror(-r));
                accept_abort(plan);
                goto done;
        }
        if (c->sandbox != m->config->sandbox) {
                r = sandbox_new(c->sandbox, SPAWN_KIND_CONNECTION, &sandbox);
                if (r >= 0)
                        r = spawner_prepare(m->spawner, sandbox, &proc);
                if (r < 0) {
                        char what[128];
                        snprintf(what, sizeof(what), "cannot start echod-spawner with sandbox = %s: %s",
                                 c->sandbox ? "true" : "false", strerror(-r));
                        reload_failed(m, what);
                        accept_abort(plan);
                        udp_abort(m->udp, udp_plan);
                        sandbox_free(sandbox);
                        goto done;
                }
        }

        /* commit: nothing below can fail */
        Config *old = m->config;
        m->config = TAKE_PTR(c);
        accept_commit(m->accept, plan, &changes);
        udp_commit(m->udp, udp_plan, m->config);
        if (old->source_prefix_v4 != m->config->source_prefix_v4 ||
            old->source_prefix_v6 != m->config->source_prefix_v6)
                children_regroup(m->children, m->config->source_prefix_v4, m->config->source_prefix_v6);
        if (proc) {
                log_notice("started a new echod-spawner (pid %d, sandbox %s): it takes new connections, running ones "
                           "keep the sandbox they started in", (int) spawner_proc_pid(proc),
                           m->config->sandbox ? "on" : "off");
                spawner_commit(m->spawner, proc, sandbox);
                sandbox_free(m->sandbox);
                m->sandbox = sandbox;
        }
        config_free(old);
        m->ceiling = MAX(m->config->max_connections, children_active(m->children));
        accept_slots_freed(m->accept);
        m->reloads++;
        m->loaded_realtime = clock_usec(CLOCK_REALTIME);
        for (unsigned i = 0; i < changes.n_removed; i++)
                log_info("no longer listening on %s", ipaddr_format_endpoint(&changes.removed[i], a));
        for (unsigned i = 0; i < changes.n_added; i++)
                log_full(LOG_INFO, 0, MESSAGE_ID_LISTENING, "listening on %s",
                         ipaddr_format_endpoint(&changes.added[i], a));
        log_full(LOG_INFO, 0, MESSAGE_ID_RELOADED, "reloaded configuration from %s", m->config->path);
done:
        format_status(m, m->last_status, sizeof(m->last_status));
        notify_ready(m->last_status);
        return 0;
}

/* --- after every event batch ----------------------------------------------------------------- */

static void check_invariants(Manager *m) {
        const char *what = NULL;
        SpawnerStatus sp;

        spawner_status(m->spawner, &sp);
        if (children_check(m->children, &what) < 0 || accept_check(m->accept, &what) < 0 ||
            udp_check(m->udp, &what) < 0)
                goto broken;
        /* every pending slot is a hand-off the spawner side holds, queued or in flight */
        if (children_pending(m->children) != sp.queued + sp.in_flight) {
                what = "pending slots != hand-offs queued or in flight";
                goto broken;
        }
        /* a lower limit from a reload is reached by attrition: nobody is admitted above it */
        if (children_active(m->children) <= m->config->max_connections)
                m->ceiling = m->config->max_connections;
        if (children_active(m->children) > m->ceiling) {
                what = "more admitted connections than max_connections";
                goto broken;
        }
        return;
broken:
        log_error("invariant broken: %s (active %u, pending %u, queued %u, in flight %u)", what,
                  children_active(m->children), children_pending(m->children), sp.queued, sp.in_flight);
        abort();
}

static int on_post(sd_event_source *s, void *userdata) {
        Manager *m = userdata;

        if (ECHOD_INVARIANTS)
                check_invariants(m);
        if (m->stopping && children_active(m->children) == 0 && accept_headers_waiting(m->accept) == 0 &&
            udp_live(m->udp) == 0)
                return sd_event_exit(m->event, 0);
        return 0;
}

/* --- setup ----------------------------------------------------------------------------------- */

int manager_new(Config *config, Listener **listeners, unsigned n_listeners, bool activated, int control_fd,
                Manager **ret) {
        _cleanup_(closep) int cfd = control_fd;
        Manager *m = calloc(1, sizeof(Manager));
        Listener **datagram = NULL;
        unsigned n_datagram = 0;
        int r;

        if (!m || listeners_split(&listeners, n_listeners, &listeners, &n_listeners, &datagram, &n_datagram) < 0) {
                for (unsigned i = 0; i < n_listeners; i++)
                        listener_free(listeners[i]);
                free(listeners);
                config_free(config);
                free(m);
                return -ENOMEM;
        }
        m->started_realtime = m->loaded_realtime = clock_usec(CLOCK_REALTIME);
        m->started_monotonic = now_usec();
        m->config = config;
        m->stop_signal = SIGTERM;
        m->ceiling = config->max_connections;

        r = sd_event_default(&m->event);
        if (r >= 0)
                r = children_new(&m->children);
        if (r >= 0)
                r = accept_new(m->event, m->children, config, TAKE_PTR(listeners), n_listeners, activated,
                               &manager_accept_callbacks, m, &m->accept);
        else {
                for (unsigned i = 0; i < n_listeners; i++)
                        listener_free(listeners[i]);
                free(listeners);
        }
        if (r >= 0)
                r = udp_new(m->event, config, TAKE_PTR(datagram), n_datagram, activated, &m->udp);
        else {
                for (unsigned i = 0; i < n_datagram; i++)
                        listener_free(datagram[i]);
                free(datagram);
        }
        if (r >= 0)
                r = sandbox_new(config->sandbox, SPAWN_KIND_CONNECTION, &m->sandbox);
        if (r >= 0)
                r = spawner_new(m->event, SPAWN_KIND_CONNECTION, &manager_spawner_callbacks, m, &m->spawner);
        if (r >= 0 && cfd >= 0)
                r = control_new(m->event, TAKE_FD(cfd), report, m, &m->control);
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
        control_free(m->control);
        notify_close();
        accept_free(m->accept);
        udp_free(m->udp);
        spawner_free(m->spawner);
        sd_event_source_disable_unref(m->post);
        sd_event_source_disable_unref(m->status_timer);
        sd_event_source_disable_unref(m->watchdog_timer);
        sd_event_source_disable_unref(m->shutdown_timer);
        sd_event_unref(m->event);
        children_free(m->children);
        sandbox_free(m->sandbox);
        config_free(m->config);
        free(m);
        return NULL;
}

int manager_run(Manager *m, void (*ready)(void)) {
        sd_event_source *sigchld = NULL;
        unsigned n_listeners;
        Listener *const *l;
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

        if ((r = sd_event_add_signal(m->event, &sigchld, SIGCHLD, on_sigchld, m)) < 0 ||
            (r = sd_event_add_signal(m->event, NULL, SIGHUP, on_reload_signal, m)) < 0 ||
            (r = sd_event_add_signal(m->event, NULL, SIGTERM, on_stop_signal, m)) < 0 ||
            (r = sd_event_add_signal(m->event, NULL, SIGINT, on_stop_signal, m)) < 0 ||
            (r = sd_event_add_signal(m->event, NULL, SIGUSR1, on_status_signal, m)) < 0 ||
            (r = sd_event_add_post(m->event, &m->post, on_post, m)) < 0)
                return log_error_errno(r, "Failed to set up signal handling");
        /* reaping goes before accepting, so freed slots are seen by the next admission */
        (void) sd_event_source_set_priority(sigchld, SD_EVENT_PRIORITY_IMPORTANT);
        (void) sd_event_source_set_floating(sigchld, true);
        sd_event_source_unref(sigchld);
        /* should a spawner die, its children (live connections) become ours to reap */
        if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
                return log_error_errno(errno, "Failed to become a subreaper");
        r = spawner_start(m->spawner, m->sandbox);
        if (r < 0)
                return log_error_errno(r, "Failed to start echod-spawner (%s)", spawner_path());
        r = udp_start(m->udp);
        if (r < 0)
                return log_error_errno(r, "Failed to start the UDP workers");
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

        l = accept_listeners(m->accept, &n_listeners);
        for (unsigned i = 0; i < n_listeners; i++) {
                char a[IPADDR_STR_MAX];
                log_full(LOG_INFO, 0, MESSAGE_ID_LISTENING, "listening on %s%s%s",
                         ipaddr_format_endpoint(&l[i]->bound, a), l[i]->activated ? " (socket-activated)" : "",
                         l[i]->proxy ? " (PROXY protocol)" : "");
        }
        UdpSocketStatus us[2 * CONFIG_MAX_LISTEN];
        unsigned n_udp = MIN(udp_sockets(m->udp, us, ELEMENTSOF(us)), (unsigned) ELEMENTSOF(us));
        for (unsigned i = 0; i < n_udp; i++) {
                char a[IPADDR_STR_MAX];
                log_full(LOG_INFO, 0, MESSAGE_ID_LISTENING, "listening on UDP %s%s",
                         ipaddr_format_endpoint(&us[i].bound, a), us[i].activated ? " (socket-activated)" : "");
        }
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
                 (unsigned long long) children_counters(m->children)->accepted,
                 (unsigned long long) refusals_total(accept_refusals(m->accept)));
        return 0;
}
