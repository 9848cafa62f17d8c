/* The master: sd-event loop that accepts, admits, forks, reaps, reloads and drains.
 *
 * Signals are blocked and handled as sd-event sources (signalfd), never in handlers. Children are
 * reaped from one SIGCHLD source with a waitpid(-1, WNOHANG) loop. Admission happens before
 * fork, so a refused connection costs an accept and a close, never a process. */
#include "echod/manager.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "build-config.h"
#include "echod/admit.h"
#include "echod/children.h"
#include "echod/log.h"
#include "echod/notify.h"
#include "echod/worker.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

#define ACCEPT_BATCH 64
#define ACCEPT_BACKOFF_USEC (100 * USEC_PER_MSEC)
#define REFUSAL_WINDOW_USEC (10 * USEC_PER_SEC)
#define STATUS_INTERVAL_USEC USEC_PER_SEC
#define MAX_LISTENERS 64

typedef struct Counters {
        uint64_t accepted;
        uint64_t refused[_REFUSE_MAX];
        uint64_t crashed; /* children that died from a signal or failed setup */
        uint64_t bytes_in, bytes_out;
        unsigned peak;
} Counters;

struct Manager {
        sd_event *event;
        Config *config;
        Listener **listeners;
        unsigned n_listeners;
        bool activated;
        ChildTable *children;
        SourceTable *sources;
        Counters counters;
        RefusalWindow refusal_windows[_REFUSE_MAX];
        sd_event_source *refusal_timer;
        sd_event_source *backoff_timer;
        sd_event_source *status_timer;
        sd_event_source *shutdown_timer;
        bool stopping;
        char last_status[512];
};

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata);
static unsigned reap_children(Manager *m);

static AdmitLimits manager_limits(const Manager *m) {
        return (AdmitLimits) {
                .max_connections = m->config->max_connections,
                .max_per_source = m->config->max_per_source,
                .prefix_v4 = m->config->source_prefix_v4,
                .prefix_v6 = m->config->source_prefix_v6,
        };
}

static uint64_t refused_total(const Counters *c) {
        uint64_t n = 0;
        for (int i = 1; i < _REFUSE_MAX; i++)
                n += c->refused[i];
        return n;
}

static void format_status(Manager *m, char *buf, size_t size) {
        const Counters *c = &m->counters;
        int n = snprintf(buf, size,
                         "%u active (peak %u), %llu accepted, %llu refused (capacity %llu, per-source %llu, "
                         "fork %llu), %llu crashed; listening on",
                         child_table_active(m->children), c->peak, (unsigned long long) c->accepted,
                         (unsigned long long) refused_total(c),
                         (unsigned long long) c->refused[REFUSE_CAPACITY],
                         (unsigned long long) c->refused[REFUSE_PER_SOURCE],
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

static int on_status_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        update_status(m, false);
        return sd_event_source_set_time(s, usec + STATUS_INTERVAL_USEC);
}

static void listeners_enable(Manager *m, bool on) {
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
                /* after EMFILE backoff the listeners are off until the timer re-enables them */
                if (m->backoff_timer)
                        (void) sd_event_source_set_enabled(l->source, SD_EVENT_OFF);
        }
        return 0;
}

static void log_listeners(Manager *m) {
        for (unsigned i = 0; i < m->n_listeners; i++) {
                char a[IPADDR_STR_MAX];
                log_full(LOG_INFO, 0, MESSAGE_ID_LISTENING, "listening on %s%s",
                         ipaddr_format_endpoint(&m->listeners[i]->bound, a),
                         m->listeners[i]->activated ? " (socket-activated)" : "");
        }
}

/* --- refusals ------------------------------------------------------------------------------ */

static int on_refusal_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        uint64_t now = now_usec();
        bool open = false;

        for (int i = 1; i < _REFUSE_MAX; i++) {
                RefusalSummary sum;
                char src[IPADDR_STR_MAX];
                if (refusal_window_flush(&m->refusal_windows[i], (Refusal) i, now, REFUSAL_WINDOW_USEC, &sum))
                        log_full(LOG_WARNING, 0, MESSAGE_ID_REFUSED,
                                 "refused %llu more connections in %llu s: %s (most from %s: %llu)",
                                 (unsigned long long) sum.count,
                                 (unsigned long long) (sum.window_usec / USEC_PER_SEC), refusal_name(sum.reason),
                                 ipaddr_format_prefix(&sum.top_source, src), (unsigned long long) sum.top_count);
                open = open || m->refusal_windows[i].start_usec != 0;
        }
        if (!open)
                return 0; /* a oneshot: it stays off until the next refusal */
        (void) sd_event_source_set_time(s, usec + REFUSAL_WINDOW_USEC);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static void note_refusal(Manager *m, Refusal reason, const IpAddr *peer, const IpAddr *source, int error) {
        char p[IPADDR_STR_MAX];

        m->counters.refused[reason]++;
        if (!refusal_window_note(&m->refusal_windows[reason], source, now_usec()))
                return;
        switch (reason) {
        case REFUSE_CAPACITY:
                log_full(LOG_WARNING, 0, MESSAGE_ID_REFUSED,
                         "refused connection from %s: capacity (max_connections=%u reached)",
                         ipaddr_format_endpoint(peer, p), m->config->max_connections);
                break;
        case REFUSE_PER_SOURCE: {
                char s[IPADDR_STR_MAX];
                log_full(LOG_WARNING, 0, MESSAGE_ID_REFUSED,
                         "refused connection from %s: per-source (max_per_source=%u reached for %s)",
                         ipaddr_format_endpoint(peer, p), m->config->max_per_source,
                         ipaddr_format_prefix(source, s));
                break;
        }
        default:
                log_full(LOG_ERR, error, MESSAGE_ID_REFUSED, "refused connection from %s: %s",
                         ipaddr_format_endpoint(peer, p), refusal_name(reason));
                break;
        }
        if (!m->refusal_timer)
                (void) sd_event_add_time_relative(m->event, &m->refusal_timer, CLOCK_MONOTONIC,
                                                  REFUSAL_WINDOW_USEC, USEC_PER_SEC / 10, on_refusal_timer, m);
        else if (sd_event_source_get_enabled(m->refusal_timer, NULL) == 0) {
                (void) sd_event_source_set_time_relative(m->refusal_timer, REFUSAL_WINDOW_USEC);
                (void) sd_event_source_set_enabled(m->refusal_timer, SD_EVENT_ONESHOT);
        }
}

/* --- accept, admit, fork ------------------------------------------------------------------- */

static int on_backoff_over(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        m->backoff_timer = sd_event_source_unref(m->backoff_timer);
        if (!m->stopping)
                listeners_enable(m, true);
        return 0;
}

/* Out of fds or memory: stop accepting for a moment instead of spinning on a ready listener. */
static void accept_backoff(Manager *m, int error) {
        if (m->backoff_timer)
                return;
        log_warning_errno(error, "accept() failed, pausing new connections for %llu ms",
                          (unsigned long long) (ACCEPT_BACKOFF_USEC / USEC_PER_MSEC));
        listeners_enable(m, false);
        (void) sd_event_add_time_relative(m->event, &m->backoff_timer, CLOCK_MONOTONIC, ACCEPT_BACKOFF_USEC,
                                          0, on_backoff_over, m);
}

static void handle_connection(Manager *m, Listener *l, int fd, const SockAddr *sa, socklen_t len) {
        _cleanup_(closep) int cfd = fd;
        AdmitLimits limits = manager_limits(m);
        IpAddr peer, source;
        Refusal verdict;
        int slot, r;
        pid_t pid;

        if (ipaddr_from_sockaddr(&sa->sa, len, &peer) < 0)
                return;
        admit_source_key(&peer, &limits, &source);
        verdict = admit_connection(m->sources, &limits, child_table_active(m->children), &source);
        /* Children that finished but whose SIGCHLD is not processed yet would still count: a
         * client reconnecting at once would be refused for connections it already closed.
         * Only on this (rare) path: reap now and decide again. */
        if (verdict != ADMIT_OK && reap_children(m) > 0)
                verdict = admit_connection(m->sources, &limits, child_table_active(m->children), &source);
        if (verdict != ADMIT_OK) {
                note_refusal(m, verdict, &peer, &source, 0);
                return;
        }
        slot = child_table_reserve(m->children);
        if (slot < 0) {
                note_refusal(m, REFUSE_CAPACITY, &peer, &source, 0);
                return;
        }

        WorkerParams params = { .idle_timeout = m->config->idle_timeout };
        pid = fork();
        if (pid < 0) {
                r = negative_errno();
                child_table_abort(m->children, slot);
                note_refusal(m, REFUSE_FORK, &peer, &source, r);
                return;
        }
        if (pid == 0)
                worker_main(TAKE_FD(cfd), child_table_shared(m->children, slot), &params, &peer);

        Child child = {
                .pid = pid,
                .peer = peer,
                .local = l->bound,
                .source = source,
                .start_usec = now_usec(),
        };
        r = child_table_commit(m->children, slot, &child);
        if (r >= 0)
                r = source_table_add(m->sources, &source);
        if (r < 0) /* cannot happen: both tables hold SLOTS_MAX */
                log_error_errno(r, "Failed to account child %d", (int) pid);
        m->counters.accepted++;
        m->counters.peak = MAX(m->counters.peak, child_table_active(m->children));
}

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;
        Listener *l = NULL;

        for (unsigned i = 0; i < m->n_listeners; i++)
                if (m->listeners[i]->source == s)
                        l = m->listeners[i];
        if (!l)
                return 0;

        for (int i = 0; i < ACCEPT_BATCH; i++) {
                SockAddr sa;
                socklen_t len = sizeof(sa);
                int cfd = accept4(fd, &sa.sa, &len, SOCK_CLOEXEC);
                if (cfd < 0) {
                        switch (errno) {
                        case EAGAIN:
                                return 0;
                        case EINTR:
                        case ECONNABORTED:
                        case EPROTO:
                        case EPERM: /* firewall */
                        case ENETDOWN:
                        case ENOPROTOOPT:
                        case EHOSTDOWN:
                        case ENONET:
                        case EHOSTUNREACH:
                        case EOPNOTSUPP:
                        case ENETUNREACH:
                                continue;
                        default: /* EMFILE, ENFILE, ENOBUFS, ENOMEM and the unexpected */
                                accept_backoff(m, errno);
                                return 0;
                        }
                }
                handle_connection(m, l, cfd, &sa, len);
        }
        return 0;
}

/* --- reaping ------------------------------------------------------------------------------- */

static void record_exit(Manager *m, pid_t pid, int status) {
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
                        .local = c.local,
                        .pid = pid,
                        .duration_usec = now_usec() - c.start_usec,
                        .bytes_in = in,
                        .bytes_out = out,
                        .reason = reason,
                        .failure = failure,
                });
}

/* Collect every exited child; returns how many. */
static unsigned reap_children(Manager *m) {
        unsigned n = 0;
        int status;
        pid_t pid;

        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
                record_exit(m, pid, status);
                n++;
        }
        return n;
}

static int on_sigchld(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        reap_children(m);
        if (m->stopping && child_table_active(m->children) == 0)
                return sd_event_exit(m->event, 0);
        return 0;
}

/* --- stop ---------------------------------------------------------------------------------- */

static void signal_children(Manager *m, int sig) {
        size_t pos = 0;
        const Child *c;

        while ((c = child_table_next(m->children, &pos)))
                (void) kill(c->pid, sig);
}

static int on_shutdown_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        log_warning("shutdown_timeout (%u s) reached, killing %u remaining connections",
                    m->config->shutdown_timeout, child_table_active(m->children));
        signal_children(m, SIGKILL);
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
        if (active == 0)
                return sd_event_exit(m->event, 0);

        signal_children(m, SIGTERM);
        return sd_event_add_time_relative(m->event, &m->shutdown_timer, CLOCK_MONOTONIC,
                                          (uint64_t) m->config->shutdown_timeout * USEC_PER_SEC, 0,
                                          on_shutdown_timeout, m);
}

/* --- reload -------------------------------------------------------------------------------- */

static int apply_listeners(Manager *m, const Config *c) {
        IpAddr addrs[MAX_LISTENERS], failed = { 0 };
        Listener **list = NULL;
        char a[IPADDR_STR_MAX];
        unsigned n;
        int r;

        if (m->activated)
                return 0; /* systemd owns the sockets */
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
                config_free(m->config);
                m->config = c;
                if (regroup)
                        regroup_sources(m);
                log_full(LOG_INFO, 0, MESSAGE_ID_RELOADED, "reloaded configuration from %s", c->path);
        }
        format_status(m, m->last_status, sizeof(m->last_status));
        notify_ready(m->last_status);
        return 0;
}

/* --- setup --------------------------------------------------------------------------------- */

int manager_new(Config *config, Listener **listeners, unsigned n_listeners, bool activated, Manager **ret) {
        Manager *m = calloc(1, sizeof(Manager));
        int r;

        if (!m)
                return -ENOMEM;
        m->config = config;
        m->activated = activated;
        m->listeners = calloc(MAX(n_listeners, 1), sizeof(Listener *));
        if (!m->listeners) {
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
        free(m->listeners);
        sd_event_source_unref(m->refusal_timer);
        sd_event_source_unref(m->backoff_timer);
        sd_event_source_unref(m->status_timer);
        sd_event_source_unref(m->shutdown_timer);
        sd_event_unref(m->event);
        child_table_free(m->children);
        source_table_free(m->sources);
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
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_error_errno(errno, "Failed to block signals");

        sd_event_source *sigchld = NULL;
        if ((r = sd_event_add_signal(m->event, &sigchld, SIGCHLD, on_sigchld, m)) < 0 ||
            (r = sd_event_add_signal(m->event, NULL, SIGHUP, on_reload_signal, m)) < 0 ||
            (r = sd_event_add_signal(m->event, NULL, SIGTERM, on_stop_signal, m)) < 0 ||
            (r = sd_event_add_signal(m->event, NULL, SIGINT, on_stop_signal, m)) < 0)
                return log_error_errno(r, "Failed to set up signal handling");
        /* reaping goes before accepting, so freed slots are seen by the next admission */
        (void) sd_event_source_set_priority(sigchld, SD_EVENT_PRIORITY_IMPORTANT);
        (void) sd_event_source_set_floating(sigchld, true);
        sd_event_source_unref(sigchld);
        r = attach_listeners(m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch listeners");
        r = sd_event_add_time_relative(m->event, &m->status_timer, CLOCK_MONOTONIC, STATUS_INTERVAL_USEC,
                                       USEC_PER_SEC / 10, on_status_timer, m);
        if (r < 0)
                return log_error_errno(r, "Failed to set up status timer");
        (void) sd_event_source_set_enabled(m->status_timer, SD_EVENT_ON);
        r = sd_event_set_watchdog(m->event, true); /* WATCHDOG=1 at half of $WATCHDOG_USEC */
        if (r < 0)
                log_warning_errno(r, "Failed to enable the watchdog, ignoring");

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
