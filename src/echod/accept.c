/* From accept() to admission: PROXY header, access list, rates, limits, the wait queue.
 *
 * Admission happens before fork, so a refused connection costs an accept and a close, never a
 * process. accept.h says what this owns. */
#include "echod/accept.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echod/acl.h"
#include "echod/admit.h"
#include "echod/log.h"
#include "echod/proxywait.h"
#include "echod/ratelimit.h"
#include "echod/waitqueue.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

#define ACCEPT_BATCH 64
#define ACCEPT_BACKOFF_USEC (100 * USEC_PER_MSEC)
#define SOURCE_RATES_MAX 65536

struct Accept {
        sd_event *event;
        const Children *children;
        AcceptCallbacks cb;
        void *userdata;
        const Config *config;
        Listener **listeners;
        unsigned n_listeners;
        bool activated;
        Acl *acl;
        TokenBucket rate;
        RateTable *source_rates;
        uint64_t rates_overflows, rates_evictions; /* of the tables a reload replaced */
        ProxyWait *proxy;
        WaitQueue *wait;
        bool queue_full, stopping;
        bool run_pending; /* the wait queue may admit someone: run it after this event batch */
        sd_event_source *backoff_timer, *queue_timer, *post;
        Refusals *refusals;
};

struct AcceptPlan {
        const Config *config;
        ListenerPlan listeners;
        Acl *acl;
        RateTable *rates; /* fresh, if the per-source rate or grouping changed; else the old stays */
};

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata);

static AdmitLimits limits_of(const Config *c) {
        return (AdmitLimits) {
                .max_connections = c->max_connections,
                .max_per_source = c->max_per_source,
                .prefix_v4 = c->source_prefix_v4,
                .prefix_v6 = c->source_prefix_v6,
        };
}

/* --- listeners ------------------------------------------------------------------------------- */

static void update_listeners(Accept *a) {
        bool on = !a->stopping && !a->backoff_timer && !a->queue_full;

        for (unsigned i = 0; i < a->n_listeners; i++)
                (void) sd_event_source_set_enabled(a->listeners[i]->source, on ? SD_EVENT_ON : SD_EVENT_OFF);
}

static int watch_listener(Accept *a, Listener *l) {
        if (l->source)
                return 0;
        int r = sd_event_add_io(a->event, &l->source, l->fd, EPOLLIN, on_accept, a);
        if (r >= 0)
                r = sd_event_source_set_enabled(l->source, SD_EVENT_OFF);
        return r;
}

/* --- refusals -------------------------------------------------------------------------------- */

/* Refuse fd (closed): count it, log it or summarise it. */
static void refuse(Accept *a, int fd, const Child *info, Refusal reason, const char *detail) {
        refusals_note(a->refusals, reason, &info->peer, &info->via, info->proxied, &info->source, detail, 0);
        safe_close(fd);
}

/* Refuse fd (closed) for a limit: the detail names the limit in force. */
static void refuse_limit(Accept *a, int fd, const Child *info, Refusal verdict, const char *detail) {
        char buf[128], prefix[IPADDR_STR_MAX];

        if (!detail) {
                if (verdict == REFUSE_PER_SOURCE)
                        snprintf(buf, sizeof(buf), "max_per_source=%u reached for %s", a->config->max_per_source,
                                 ipaddr_format_prefix(&info->source, prefix));
                else
                        snprintf(buf, sizeof(buf), "max_connections=%u reached", a->config->max_connections);
                detail = buf;
        }
        refuse(a, fd, info, verdict, detail);
}

void accept_note_refusal(Accept *a, Refusal reason, const Child *info, const char *detail, int error) {
        refusals_note(a->refusals, reason, &info->peer, &info->via, info->proxied, &info->source, detail, error);
}

/* --- admission ------------------------------------------------------------------------------- */

/* Hand an admitted connection up; refused if no slot could be had. Takes fd. */
static void hand_over(Accept *a, int fd, const Child *info) {
        if (a->cb.admit(a->userdata, fd, info) < 0)
                refuse_limit(a, fd, info, REFUSE_CAPACITY, NULL);
}

static void run_queue(Accept *a);

static int on_wait_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        run_queue(userdata);
        return 0;
}

/* After every event batch: the wait queue is run here, never from inside an admission. */
static int on_post(sd_event_source *s, void *userdata) {
        Accept *a = userdata;

        if (a->run_pending)
                run_queue(a);
        return 0;
}

static void wait_arm_timer(Accept *a) {
        uint64_t when = wait_next_deadline(a->wait);

        if (when == UINT64_MAX) {
                if (a->queue_timer)
                        (void) sd_event_source_set_enabled(a->queue_timer, SD_EVENT_OFF);
                return;
        }
        if (!a->queue_timer)
                (void) sd_event_add_time(a->event, &a->queue_timer, CLOCK_MONOTONIC, when, USEC_PER_MSEC,
                                         on_wait_timer, a);
        else {
                (void) sd_event_source_set_time(a->queue_timer, when);
                (void) sd_event_source_set_enabled(a->queue_timer, SD_EVENT_ONESHOT);
        }
}

/* A full queue pauses the listeners: the kernel's backlog holds the rest. */
static void queue_update_full(Accept *a) {
        bool full = wait_count(a->wait, WAIT_QUEUE) >= a->config->backlog;

        if (full != a->queue_full) {
                a->queue_full = full;
                update_listeners(a);
        }
}

/* Let fd wait in lane until deadline; takes it. Returns false if there is no room (fd untouched). */
static bool wait_for_slot(Accept *a, WaitLane lane, int fd, const Child *info, Refusal verdict, uint64_t now,
                          uint64_t deadline) {
        if (!wait_add(a->wait, lane, fd, info, verdict, now, deadline))
                return false;
        wait_arm_timer(a);
        queue_update_full(a);
        return true;
}

/* The verdict on a connection whose client is known (info->peer). Takes fd. */
static void admit(Accept *a, int fd, Child *info) {
        const Config *cfg = a->config;
        AdmitLimits limits = limits_of(cfg);
        uint64_t now = now_usec();
        char detail[128], prefix[IPADDR_STR_MAX];

        if (!acl_allows(a->acl, &info->peer)) {
                refuse(a, fd, info, REFUSE_ACL, "denied by allow/deny");
                return;
        }
        admit_source_key(&info->peer, &limits, &info->source);
        if (cfg->per_source_rate > 0 &&
            !rate_table_take(a->source_rates, &info->source, cfg->per_source_rate,
                             config_burst(cfg->per_source_rate, cfg->per_source_burst), now)) {
                snprintf(detail, sizeof(detail), "per_source_rate=%g/s exceeded for %s", cfg->per_source_rate,
                         ipaddr_format_prefix(&info->source, prefix));
                refuse(a, fd, info, REFUSE_PER_SOURCE_RATE, detail);
                return;
        }
        if (cfg->connection_rate > 0 &&
            !token_bucket_take(&a->rate, cfg->connection_rate, config_burst(cfg->connection_rate, cfg->connection_burst),
                               now)) {
                snprintf(detail, sizeof(detail), "connection_rate=%g/s exceeded", cfg->connection_rate);
                refuse(a, fd, info, REFUSE_RATE, detail);
                return;
        }

        /* those already waiting go first, and a source's waiting connections count for it */
        unsigned busy = children_active(a->children) + wait_total(a->wait);
        unsigned from_source = children_source_count(a->children, &info->source) +
                               wait_source_count(a->wait, &info->source);
        Refusal verdict = admit_counts(&limits, busy, from_source);
        if (verdict == ADMIT_OK) {
                hand_over(a, fd, info);
                return;
        }
        /* held back only by those waiting ahead of it (who may be waiting for their own source's
         * limit): the queue decides, in order, after this batch */
        if (admit_counts(&limits, children_active(a->children), children_source_count(a->children, &info->source)) ==
            ADMIT_OK)
                a->run_pending = true;
        if (verdict == REFUSE_CAPACITY && cfg->at_capacity == AT_CAPACITY_QUEUE && !a->queue_full &&
            wait_for_slot(a, WAIT_QUEUE, fd, info, verdict, now, now + (uint64_t) cfg->queue_timeout * USEC_PER_SEC))
                return;
        if (!wait_for_slot(a, WAIT_GRACE, fd, info, verdict, now, now + ACCEPT_GRACE_USEC)) {
                a->run_pending = false; /* it was not queued after all */
                refuse_limit(a, fd, info, verdict, NULL);
        }
}

/* --- the wait queue's callbacks -------------------------------------------------------------- */

static Refusal on_wait_verdict(void *userdata, const Child *info) {
        Accept *a = userdata;
        AdmitLimits limits = limits_of(a->config);

        return admit_counts(&limits, children_active(a->children), children_source_count(a->children, &info->source));
}

static void on_wait_admit(void *userdata, int fd, const Child *info) {
        hand_over(userdata, fd, info);
}

static void on_wait_expire(void *userdata, int fd, const Child *info, WaitLane lane, Refusal verdict) {
        Accept *a = userdata;
        char detail[64];

        if (lane == WAIT_QUEUE && a->config->at_capacity == AT_CAPACITY_REFUSE)
                refuse_limit(a, fd, info, REFUSE_CAPACITY, "at_capacity is now refuse");
        else if (lane == WAIT_QUEUE) {
                snprintf(detail, sizeof(detail), "waited queue_timeout=%u s", a->config->queue_timeout);
                refuse_limit(a, fd, info, REFUSE_CAPACITY, detail);
        } else
                refuse_limit(a, fd, info, verdict, NULL);
}

void accept_slots_freed(Accept *a) {
        a->run_pending = true;
}

static void run_queue(Accept *a) {
        a->run_pending = false;
        wait_run(a->wait, now_usec(), !a->stopping);
        wait_arm_timer(a);
        queue_update_full(a);
}

/* --- PROXY protocol -------------------------------------------------------------------------- */

static bool proxy_trusted(const Config *cfg, const IpAddr *sender) {
        for (unsigned i = 0; i < cfg->proxy_trusted.n; i++)
                if (ipaddr_prefix_contains(&cfg->proxy_trusted.items[i], sender))
                        return true;
        return false;
}

static void on_proxy_done(void *userdata, int fd, const Child *info) {
        Child c = *info;
        admit(userdata, fd, &c);
}

static void on_proxy_failed(void *userdata, int fd, const Child *info, const char *why) {
        refuse(userdata, fd, info, REFUSE_PROXY, why);
}

/* --- accept ---------------------------------------------------------------------------------- */

static int on_backoff_over(sd_event_source *s, uint64_t usec, void *userdata) {
        Accept *a = userdata;

        a->backoff_timer = sd_event_source_unref(a->backoff_timer);
        update_listeners(a);
        return 0;
}

/* Out of fds or memory: stop accepting for a moment instead of spinning on a ready listener.
 * (Logged here: this is where the decision to pause is taken.) */
static void accept_backoff(Accept *a, int error) {
        if (a->backoff_timer)
                return;
        log_warning_errno(error, "accept() failed, pausing new connections for %llu ms",
                          (unsigned long long) (ACCEPT_BACKOFF_USEC / USEC_PER_MSEC));
        (void) sd_event_add_time_relative(a->event, &a->backoff_timer, CLOCK_MONOTONIC, ACCEPT_BACKOFF_USEC, 0,
                                          on_backoff_over, a);
        update_listeners(a);
}

static void handle_connection(Accept *a, Listener *l, int fd, const SockAddr *sa, socklen_t len) {
        Child info = { .local = l->bound };

        if (ipaddr_from_sockaddr(&sa->sa, len, &info.peer) < 0) {
                safe_close(fd);
                return;
        }
        info.via = info.peer;
        if (!l->proxy)
                admit(a, fd, &info);
        else if (!proxy_trusted(a->config, &info.via))
                refuse(a, fd, &info, REFUSE_PROXY, "untrusted sender");
        else
                proxy_wait_start(a->proxy, fd, &info, (uint64_t) a->config->proxy_timeout * USEC_PER_SEC);
}

/* Take up to max connections the kernel completed on l. */
static void accept_some(Accept *a, Listener *l, unsigned max) {
        int fd = l->fd;

        for (unsigned i = 0; i < max; i++) {
                SockAddr sa;
                socklen_t len = sizeof(sa);
                /* blocking, as the child sleeps in recv() on it: the master only ever reads it
                 * with MSG_DONTWAIT (a PROXY header), and the child is spared the two fcntl()
                 * calls to clear O_NONBLOCK */
                int cfd = accept4(fd, &sa.sa, &len, SOCK_CLOEXEC);
                if (cfd < 0) {
                        switch (errno) {
                        case EAGAIN:
                                return;
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
                                if (!a->stopping)
                                        accept_backoff(a, errno);
                                return;
                        }
                }
                handle_connection(a, l, cfd, &sa, len);
                if (a->queue_full)
                        return; /* the listeners are off now: the kernel backlog holds the rest */
        }
}

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Accept *a = userdata;

        for (unsigned i = 0; i < a->n_listeners; i++)
                if (a->listeners[i]->source == s) {
                        accept_some(a, a->listeners[i], ACCEPT_BATCH);
                        break;
                }
        return 0;
}

/* --- configuration --------------------------------------------------------------------------- */

static bool rates_changed(const Config *old, const Config *c) {
        return old->per_source_rate != c->per_source_rate || old->per_source_burst != c->per_source_burst ||
               old->source_prefix_v4 != c->source_prefix_v4 || old->source_prefix_v6 != c->source_prefix_v6;
}

void accept_abort(AcceptPlan *p) {
        if (!p)
                return;
        listeners_abort(&p->listeners);
        acl_free(p->acl);
        rate_table_free(p->rates);
        free(p);
}

static int fail(char **ret_error, int r, const char *what) {
        if (ret_error && asprintf(ret_error, "%s: %s", what, strerror(-r)) < 0)
                *ret_error = NULL;
        return r;
}

int accept_prepare(Accept *a, const Config *c, AcceptPlan **ret, char **ret_error) {
        ListenAddr addrs[2 * CONFIG_MAX_LISTEN];
        AcceptPlan *p = calloc(1, sizeof(AcceptPlan));
        char addr[IPADDR_STR_MAX];
        int r;

        if (!p)
                return fail(ret_error, -ENOMEM, "out of memory");
        p->config = c;
        if (a->activated)
                r = listeners_prepare_activated(a->listeners, a->n_listeners, c->proxy_protocol, &p->listeners);
        else {
                unsigned n = config_listen_addresses(c, addrs, ELEMENTSOF(addrs));
                r = listeners_prepare(a->listeners, a->n_listeners, addrs, n, c->backlog, &p->listeners);
                if (r < 0) {
                        char what[IPADDR_STR_MAX + 32];
                        snprintf(what, sizeof(what), "cannot listen on %s", ipaddr_format_endpoint(&p->listeners.failed, addr));
                        accept_abort(p);
                        return fail(ret_error, r, what);
                }
        }
        for (unsigned i = 0; r >= 0 && i < p->listeners.n; i++)
                if (p->listeners.fresh[i])
                        r = watch_listener(a, p->listeners.list[i]);
        if (r < 0) {
                accept_abort(p);
                return fail(ret_error, r, "cannot set up listeners");
        }
        r = acl_new(&c->allow, &c->deny, &p->acl);
        if (r < 0) {
                accept_abort(p);
                return fail(ret_error, r, "cannot build the access lists");
        }
        if (!a->config || rates_changed(a->config, c)) {
                r = rate_table_new(SOURCE_RATES_MAX, &p->rates);
                if (r < 0) {
                        accept_abort(p);
                        return fail(ret_error, r, "cannot build the per-source rate table");
                }
        }
        *ret = p;
        return 0;
}

void accept_commit(Accept *a, AcceptPlan *p, AcceptChanges *ret) {
        const Config *old = a->config;

        *ret = (AcceptChanges) { 0 };
        for (unsigned j = 0; j < a->n_listeners; j++) {
                bool kept = false;
                for (unsigned i = 0; i < p->listeners.n && !kept; i++)
                        kept = p->listeners.list[i] == a->listeners[j];
                if (!kept && ret->n_removed < ELEMENTSOF(ret->removed))
                        ret->removed[ret->n_removed++] = a->listeners[j]->bound;
        }
        for (unsigned i = 0; i < p->listeners.n; i++)
                if (p->listeners.fresh[i] && ret->n_added < ELEMENTSOF(ret->added))
                        ret->added[ret->n_added++] = p->listeners.list[i]->bound;
        unsigned n_old = a->n_listeners;
        a->n_listeners = p->listeners.n;
        a->listeners = listeners_commit(a->listeners, n_old, &p->listeners);

        a->config = p->config;
        acl_free(a->acl);
        a->acl = TAKE_PTR(p->acl);
        if (p->rates) {
                /* per-source buckets are keyed by the grouping; a new rate starts them afresh */
                if (a->source_rates) {
                        a->rates_overflows += rate_table_overflows(a->source_rates);
                        a->rates_evictions += rate_table_evictions(a->source_rates);
                }
                rate_table_free(a->source_rates);
                a->source_rates = TAKE_PTR(p->rates);
        }
        if (old && (old->source_prefix_v4 != a->config->source_prefix_v4 ||
                    old->source_prefix_v6 != a->config->source_prefix_v6))
                wait_regroup(a->wait, a->config->source_prefix_v4, a->config->source_prefix_v6);
        /* queued connections: the new limits and mode apply at once */
        if (old && a->config->at_capacity == AT_CAPACITY_REFUSE)
                (void) wait_expire_lane(a->wait, WAIT_QUEUE);
        free(p);
        update_listeners(a);
        wait_arm_timer(a);
        queue_update_full(a);
}

/* --- life ------------------------------------------------------------------------------------ */

int accept_new(sd_event *event, const Children *children, const Config *config, Listener **listeners,
               unsigned n_listeners, bool activated, const AcceptCallbacks *cb, void *userdata, Accept **ret) {
        Accept *a = calloc(1, sizeof(Accept));
        AcceptPlan *p = NULL;
        AcceptChanges changes;
        int r;

        if (!a) {
                for (unsigned i = 0; i < n_listeners; i++)
                        listener_free(listeners[i]);
                free(listeners);
                return -ENOMEM;
        }
        *a = (Accept) { .event = sd_event_ref(event), .children = children, .cb = *cb, .userdata = userdata,
                        .listeners = listeners, .n_listeners = n_listeners, .activated = activated };
        static const WaitCallbacks wait_cb = {
                .verdict = on_wait_verdict,
                .admit = on_wait_admit,
                .expire = on_wait_expire,
        };
        static const ProxyWaitCallbacks proxy_cb = {
                .done = on_proxy_done,
                .failed = on_proxy_failed,
        };
        r = refusals_new(event, &a->refusals);
        if (r >= 0)
                r = wait_queue_new(&wait_cb, a, &a->wait);
        if (r >= 0)
                r = proxy_wait_new(event, &proxy_cb, a, &a->proxy);
        if (r >= 0)
                r = sd_event_add_post(event, &a->post, on_post, a);
        for (unsigned i = 0; r >= 0 && i < n_listeners; i++)
                r = watch_listener(a, listeners[i]);
        /* the first configuration goes in like any reload: its listeners are the ones bound */
        if (r >= 0)
                r = accept_prepare(a, config, &p, NULL);
        if (r < 0) {
                accept_free(a);
                return r;
        }
        accept_commit(a, p, &changes);
        *ret = a;
        return 0;
}

unsigned accept_stop(Accept *a) {
        unsigned n = 0;

        /* what the kernel already completed is a client that connected before the stop: it is
         * taken and admitted (or refused) like any other, not reset with the listener */
        if (!a->stopping)
                for (unsigned i = 0; i < a->n_listeners; i++)
                        if (!a->queue_full)
                                accept_some(a, a->listeners[i], a->config->backlog);
        a->stopping = true;
        for (unsigned i = 0; i < a->n_listeners; i++)
                listener_free(a->listeners[i]);
        a->n_listeners = 0;
        /* connections waiting for their PROXY header stay: a balancer sends it, and the request,
         * at once (accept_drop_headers() ends them at shutdown_timeout) */
        if (a->wait)
                n += wait_drop(a->wait);
        if (a->queue_timer)
                (void) sd_event_source_set_enabled(a->queue_timer, SD_EVENT_OFF);
        return n;
}

unsigned accept_headers_waiting(const Accept *a) {
        return a->proxy ? proxy_wait_count(a->proxy) : 0;
}

unsigned accept_drop_headers(Accept *a) {
        return a->proxy ? proxy_wait_drop(a->proxy) : 0;
}

Accept *accept_free(Accept *a) {
        if (!a)
                return NULL;
        (void) accept_stop(a);
        (void) accept_drop_headers(a);
        free(a->listeners);
        sd_event_source_disable_unref(a->backoff_timer);
        sd_event_source_disable_unref(a->queue_timer);
        sd_event_source_disable_unref(a->post);
        acl_free(a->acl);
        rate_table_free(a->source_rates);
        wait_queue_free(a->wait);
        proxy_wait_free(a->proxy);
        refusals_free(a->refusals);
        sd_event_unref(a->event);
        free(a);
        return NULL;
}

Listener *const *accept_listeners(const Accept *a, unsigned *ret_n) {
        *ret_n = a->n_listeners;
        return a->listeners;
}

unsigned accept_queued(const Accept *a) {
        return wait_total(a->wait);
}

const Refusals *accept_refusals(const Accept *a) {
        return a->refusals;
}

void accept_rate_table(const Accept *a, SourceTableStats *ret) {
        *ret = (SourceTableStats) {
                .entries = a->source_rates ? rate_table_size(a->source_rates) : 0,
                .capacity = SOURCE_RATES_MAX,
                .overflows = a->rates_overflows + (a->source_rates ? rate_table_overflows(a->source_rates) : 0),
                .evictions = a->rates_evictions + (a->source_rates ? rate_table_evictions(a->source_rates) : 0),
        };
}

int accept_check(const Accept *a, const char **ret_what) {
        return wait_check(a->wait, ret_what);
}
