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
#include "echod/ratelimit.h"
#include "shared/macro.h"
#include "shared/proxy.h"
#include "shared/timeutil.h"

#define ACCEPT_BATCH 64
#define ACCEPT_BACKOFF_USEC (100 * USEC_PER_MSEC)
#define PROXY_PENDING_MAX 1024
#define SOURCE_RATES_MAX 65536

/* An accepted connection not yet admitted: waiting for its PROXY header, or queued. */
typedef struct Conn {
        Accept *accept;
        int fd;
        IpAddr peer;  /* the client: the PROXY header's source, or the socket peer */
        IpAddr via;   /* the socket peer (the load balancer, if proxied) */
        bool proxied; /* peer came from a PROXY header */
        IpAddr local;
        IpAddr source; /* per-source key, set at the verdict */
        bool counted;  /* holds a count in the queue's source table */
        Refusal verdict; /* why it waits */
        uint64_t deadline;
        sd_event_source *io, *timer; /* while waiting for a PROXY header */
        uint8_t *header;             /* ...and the part of it already read */
        size_t header_len;
        struct Conn *prev, *next;
} Conn;

typedef struct ConnList {
        Conn *head, *tail;
        unsigned n;
} ConnList;

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
        ConnList proxy_pending;
        ConnList queue; /* at_capacity = queue: up to queue_timeout */
        ConnList grace; /* otherwise: up to ACCEPT_GRACE_USEC */
        SourceTable *queued_sources;
        bool queue_full, stopping;
        sd_event_source *backoff_timer, *queue_timer;
        Refusals *refusals;
};

struct AcceptPlan {
        const Config *config;
        ListenerPlan listeners;
        Acl *acl;
        RateTable *rates; /* fresh, if the per-source rate or grouping changed; else the old stays */
};

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata);

/* --- lists ----------------------------------------------------------------------------------- */

static void list_append(ConnList *l, Conn *c) {
        c->prev = l->tail;
        c->next = NULL;
        if (l->tail)
                l->tail->next = c;
        else
                l->head = c;
        l->tail = c;
        l->n++;
}

static void list_remove(ConnList *l, Conn *c) {
        if (c->prev)
                c->prev->next = c->next;
        else
                l->head = c->next;
        if (c->next)
                c->next->prev = c->prev;
        else
                l->tail = c->prev;
        c->prev = c->next = NULL;
        l->n--;
}

static void conn_free(Conn *c) {
        if (c->counted)
                source_table_remove(c->accept->queued_sources, &c->source);
        free(c->header);
        sd_event_source_disable_unref(c->io);
        sd_event_source_disable_unref(c->timer);
        safe_close(c->fd);
        free(c);
}

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

static void refuse(Accept *a, Conn *c, Refusal reason, const char *detail, int error) {
        refusals_note(a->refusals, reason, &c->peer, &c->via, c->proxied, &c->source, detail, error);
        conn_free(c);
}

static void refuse_verdict(Accept *a, Conn *c, Refusal verdict) {
        char detail[128], prefix[IPADDR_STR_MAX];

        if (verdict == REFUSE_PER_SOURCE)
                snprintf(detail, sizeof(detail), "max_per_source=%u reached for %s", a->config->max_per_source,
                         ipaddr_format_prefix(&c->source, prefix));
        else
                snprintf(detail, sizeof(detail), "max_connections=%u reached", a->config->max_connections);
        refuse(a, c, verdict, detail, 0);
}

void accept_note_refusal(Accept *a, Refusal reason, const Child *info, const char *detail, int error) {
        refusals_note(a->refusals, reason, &info->peer, &info->via, info->proxied, &info->source, detail, error);
}

/* --- admission ------------------------------------------------------------------------------- */

/* Hand c up; refused if no slot could be had. Frees c either way. */
static void hand_over(Accept *a, Conn *c) {
        Child info = { .proxied = c->proxied, .peer = c->peer, .via = c->via, .local = c->local,
                       .source = c->source };

        if (c->counted) {
                source_table_remove(a->queued_sources, &c->source);
                c->counted = false;
        }
        if (a->cb.admit(a->userdata, c->fd, &info) < 0) {
                refuse_verdict(a, c, REFUSE_CAPACITY);
                return;
        }
        c->fd = -1; /* taken */
        conn_free(c);
}

static int on_queue_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        accept_run_queue(userdata);
        return 0;
}

static void queue_arm_timer(Accept *a) {
        uint64_t when = UINT64_MAX;

        if (a->queue.head)
                when = a->queue.head->deadline;
        if (a->grace.head)
                when = MIN(when, a->grace.head->deadline);
        if (when == UINT64_MAX) {
                if (a->queue_timer)
                        (void) sd_event_source_set_enabled(a->queue_timer, SD_EVENT_OFF);
                return;
        }
        if (!a->queue_timer)
                (void) sd_event_add_time(a->event, &a->queue_timer, CLOCK_MONOTONIC, when, USEC_PER_MSEC,
                                         on_queue_timer, a);
        else {
                (void) sd_event_source_set_time(a->queue_timer, when);
                (void) sd_event_source_set_enabled(a->queue_timer, SD_EVENT_ONESHOT);
        }
}

static void queue_update_full(Accept *a) {
        bool full = a->queue.n >= a->config->backlog;

        if (full != a->queue_full) {
                a->queue_full = full;
                update_listeners(a);
        }
}

/* Queue c until deadline. Returns false if there is no room (then c is untouched). */
static bool enqueue(Accept *a, ConnList *l, Conn *c, Refusal verdict, uint64_t deadline) {
        if (l == &a->grace && l->n >= ACCEPT_GRACE_MAX)
                return false;
        c->verdict = verdict;
        c->deadline = deadline;
        c->counted = source_table_add(a->queued_sources, &c->source) >= 0;
        list_append(l, c);
        queue_arm_timer(a);
        queue_update_full(a);
        return true;
}

static void admit(Accept *a, Conn *c) {
        const Config *cfg = a->config;
        AdmitLimits limits = limits_of(cfg);
        uint64_t now = now_usec();
        char detail[128], prefix[IPADDR_STR_MAX];

        if (!acl_allows(a->acl, &c->peer)) {
                refuse(a, c, REFUSE_ACL, "denied by allow/deny", 0);
                return;
        }
        admit_source_key(&c->peer, &limits, &c->source);
        if (cfg->per_source_rate > 0 &&
            !rate_table_take(a->source_rates, &c->source, cfg->per_source_rate,
                             config_burst(cfg->per_source_rate, cfg->per_source_burst), now)) {
                snprintf(detail, sizeof(detail), "per_source_rate=%g/s exceeded for %s", cfg->per_source_rate,
                         ipaddr_format_prefix(&c->source, prefix));
                refuse(a, c, REFUSE_PER_SOURCE_RATE, detail, 0);
                return;
        }
        if (cfg->connection_rate > 0 &&
            !token_bucket_take(&a->rate, cfg->connection_rate, config_burst(cfg->connection_rate, cfg->connection_burst),
                               now)) {
                snprintf(detail, sizeof(detail), "connection_rate=%g/s exceeded", cfg->connection_rate);
                refuse(a, c, REFUSE_RATE, detail, 0);
                return;
        }

        /* those already waiting go first, and a source's queued connections count for it */
        unsigned busy = children_active(a->children) + a->queue.n + a->grace.n;
        unsigned from_source = limits.max_per_source > 0 ? children_source_count(a->children, &c->source) +
                                                                   source_table_count(a->queued_sources, &c->source)
                                                         : 0;
        Refusal verdict = admit_counts(&limits, busy, from_source);
        if (verdict == ADMIT_OK) {
                hand_over(a, c);
                return;
        }
        if (verdict == REFUSE_CAPACITY && cfg->at_capacity == AT_CAPACITY_QUEUE && !a->queue_full &&
            enqueue(a, &a->queue, c, verdict, now + (uint64_t) cfg->queue_timeout * USEC_PER_SEC))
                return;
        if (enqueue(a, &a->grace, c, verdict, now + ACCEPT_GRACE_USEC))
                return;
        refuse_verdict(a, c, verdict);
}

/* Admit from l in order while there is room; refuse what has waited until its deadline. A
 * connection held back by its own source's limit does not hold back the others. */
static void run_list(Accept *a, ConnList *l, uint64_t now) {
        AdmitLimits limits = limits_of(a->config);
        bool full = false;

        for (Conn *c = l->head, *next; c; c = next) {
                next = c->next;
                if (now >= c->deadline) {
                        list_remove(l, c);
                        if (l == &a->queue) {
                                char detail[64];
                                snprintf(detail, sizeof(detail), "waited queue_timeout=%u s", a->config->queue_timeout);
                                refuse(a, c, REFUSE_CAPACITY, detail, 0);
                        } else
                                refuse_verdict(a, c, c->verdict);
                        continue;
                }
                if (full || a->stopping)
                        continue;
                unsigned from_source = limits.max_per_source > 0 ? children_source_count(a->children, &c->source) : 0;
                Refusal verdict = admit_counts(&limits, children_active(a->children), from_source);
                if (verdict == ADMIT_OK) {
                        list_remove(l, c);
                        hand_over(a, c);
                } else if (verdict == REFUSE_CAPACITY)
                        full = true; /* nobody else fits either; only deadlines are left to check */
        }
}

void accept_run_queue(Accept *a) {
        uint64_t now = now_usec();

        if (!a->queue.head && !a->grace.head)
                return;
        /* the older list first: both are in arrival order */
        if (a->grace.head && (!a->queue.head || a->grace.head->deadline - ACCEPT_GRACE_USEC <=
                                                        a->queue.head->deadline -
                                                                (uint64_t) a->config->queue_timeout * USEC_PER_SEC)) {
                run_list(a, &a->grace, now);
                run_list(a, &a->queue, now);
        } else {
                run_list(a, &a->queue, now);
                run_list(a, &a->grace, now);
        }
        queue_arm_timer(a);
        queue_update_full(a);
}

/* --- PROXY protocol -------------------------------------------------------------------------- */

static bool proxy_trusted(const Config *cfg, const IpAddr *sender) {
        for (unsigned i = 0; i < cfg->proxy_trusted.n; i++)
                if (ipaddr_prefix_contains(&cfg->proxy_trusted.items[i], sender))
                        return true;
        return false;
}

/* Read the header without ever taking a payload byte: peek at what arrived and parse it after
 * what we hold. Complete: consume exactly the rest of the header. A valid but incomplete prefix
 * is all header, so it is consumed into c->header — otherwise the socket would stay readable
 * and a level-triggered wait would spin on the same bytes.
 * Returns 1 done, 0 need more, or a negative error for the refusal. */
static int proxy_read_header(Conn *c) {
        uint8_t buf[PROXY_PARSE_MAX];
        ProxyHeader h;
        ssize_t n, r;

        if (c->header_len > 0)
                memcpy(buf, c->header, c->header_len);
        n = recv(c->fd, buf + c->header_len, sizeof(buf) - c->header_len, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0)
                return errno == EAGAIN || errno == EINTR ? 0 : negative_errno();
        if (n == 0)
                return -ECONNRESET;
        r = proxy_header_parse(buf, c->header_len + (size_t) n, &h);
        if (r < 0)
                return (int) r;
        if (r == 0) {
                if (!c->header && !(c->header = malloc(PROXY_PARSE_MAX)))
                        return -ENOMEM;
                if (recv(c->fd, c->header + c->header_len, (size_t) n, MSG_DONTWAIT) != n)
                        return -EIO;
                c->header_len += (size_t) n;
                return 0;
        }
        size_t rest = (size_t) r - c->header_len;
        if (rest > 0 && recv(c->fd, buf, rest, MSG_DONTWAIT) != (ssize_t) rest)
                return -EIO;
        c->header = mfree(c->header);
        c->header_len = 0;
        if (h.command == PROXY_CMD_PROXY && h.has_addresses) {
                c->peer = h.src;
                c->proxied = true;
        }
        return 1;
}

static const char *proxy_error_detail(int r) {
        switch (r) {
        case -ECONNRESET:
                return "connection closed before the header";
        case -EBADMSG:
        case -E2BIG:
        case -EPROTONOSUPPORT:
        case -EAFNOSUPPORT:
                return "malformed header";
        default:
                return "error reading the header";
        }
}

static void proxy_done_waiting(Accept *a, Conn *c) {
        list_remove(&a->proxy_pending, c);
        c->io = sd_event_source_disable_unref(c->io);
        c->timer = sd_event_source_disable_unref(c->timer);
}

static int on_proxy_readable(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Conn *c = userdata;
        Accept *a = c->accept;
        int r = proxy_read_header(c);

        if (r == 0)
                return 0;
        proxy_done_waiting(a, c);
        if (r < 0)
                refuse(a, c, REFUSE_PROXY, proxy_error_detail(r), 0);
        else
                admit(a, c);
        return 0;
}

static int on_proxy_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Conn *c = userdata;
        Accept *a = c->accept;
        char detail[64];

        proxy_done_waiting(a, c);
        snprintf(detail, sizeof(detail), "no header within %u s", a->config->proxy_timeout);
        refuse(a, c, REFUSE_PROXY, detail, 0);
        return 0;
}

static void proxy_start(Accept *a, Conn *c) {
        int r;

        if (!proxy_trusted(a->config, &c->via)) {
                refuse(a, c, REFUSE_PROXY, "untrusted sender", 0);
                return;
        }
        r = proxy_read_header(c); /* usually the header came with the handshake's first segment */
        if (r > 0) {
                admit(a, c);
                return;
        }
        if (r < 0) {
                refuse(a, c, REFUSE_PROXY, proxy_error_detail(r), 0);
                return;
        }
        if (a->proxy_pending.n >= PROXY_PENDING_MAX) {
                refuse(a, c, REFUSE_PROXY, "too many connections waiting for a header", 0);
                return;
        }
        r = sd_event_add_io(a->event, &c->io, c->fd, EPOLLIN, on_proxy_readable, c);
        if (r >= 0)
                r = sd_event_add_time_relative(a->event, &c->timer, CLOCK_MONOTONIC,
                                               (uint64_t) a->config->proxy_timeout * USEC_PER_SEC,
                                               USEC_PER_MSEC * 10, on_proxy_timeout, c);
        if (r < 0) {
                refuse(a, c, REFUSE_PROXY, NULL, r);
                return;
        }
        list_append(&a->proxy_pending, c);
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
        Conn *c = calloc(1, sizeof(Conn));

        if (!c) {
                safe_close(fd);
                return;
        }
        c->accept = a;
        c->fd = fd;
        c->local = l->bound;
        if (ipaddr_from_sockaddr(&sa->sa, len, &c->peer) < 0) {
                conn_free(c);
                return;
        }
        c->via = c->peer;
        if (l->proxy)
                proxy_start(a, c);
        else
                admit(a, c);
}

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Accept *a = userdata;
        Listener *l = NULL;

        for (unsigned i = 0; i < a->n_listeners && !l; i++)
                if (a->listeners[i]->source == s)
                        l = a->listeners[i];
        if (!l)
                return 0;

        for (int i = 0; i < ACCEPT_BATCH; i++) {
                SockAddr sa;
                socklen_t len = sizeof(sa);
                /* blocking, as the child sleeps in recv() on it: the master only ever reads it
                 * with MSG_DONTWAIT (a PROXY header), and the child is spared the two fcntl()
                 * calls to clear O_NONBLOCK */
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
                                accept_backoff(a, errno);
                                return 0;
                        }
                }
                handle_connection(a, l, cfd, &sa, len);
                if (a->queue_full)
                        return 0; /* the listeners are off now: the kernel backlog holds the rest */
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

/* Re-key the queued connections' per-source counts under the grouping in force. */
static void regroup_queue(Accept *a) {
        AdmitLimits limits = limits_of(a->config);

        source_table_clear(a->queued_sources);
        for (ConnList *l = &a->queue; l; l = l == &a->queue ? &a->grace : NULL)
                for (Conn *c = l->head; c; c = c->next) {
                        admit_source_key(&c->peer, &limits, &c->source);
                        c->counted = source_table_add(a->queued_sources, &c->source) >= 0;
                }
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
                rate_table_free(a->source_rates);
                a->source_rates = TAKE_PTR(p->rates);
        }
        if (old && (old->source_prefix_v4 != a->config->source_prefix_v4 ||
                    old->source_prefix_v6 != a->config->source_prefix_v6))
                regroup_queue(a);
        /* queued connections: the new limits and mode apply at once */
        if (old && a->config->at_capacity == AT_CAPACITY_REFUSE)
                while (a->queue.head) {
                        Conn *q = a->queue.head;
                        list_remove(&a->queue, q);
                        refuse(a, q, REFUSE_CAPACITY, "at_capacity is now refuse", 0);
                }
        free(p);
        update_listeners(a);
        queue_arm_timer(a);
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
        r = refusals_new(event, &a->refusals);
        if (r >= 0)
                r = source_table_new(&a->queued_sources);
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

static void drop_list(ConnList *l, unsigned *n) {
        while (l->head) {
                Conn *c = l->head;
                list_remove(l, c);
                conn_free(c);
                (*n)++;
        }
}

unsigned accept_stop(Accept *a) {
        unsigned n = 0;

        a->stopping = true;
        for (unsigned i = 0; i < a->n_listeners; i++)
                listener_free(a->listeners[i]);
        a->n_listeners = 0;
        drop_list(&a->proxy_pending, &n);
        drop_list(&a->queue, &n);
        drop_list(&a->grace, &n);
        queue_arm_timer(a);
        return n;
}

Accept *accept_free(Accept *a) {
        if (!a)
                return NULL;
        (void) accept_stop(a);
        free(a->listeners);
        sd_event_source_disable_unref(a->backoff_timer);
        sd_event_source_disable_unref(a->queue_timer);
        acl_free(a->acl);
        rate_table_free(a->source_rates);
        source_table_free(a->queued_sources);
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
        return a->queue.n + a->grace.n;
}

unsigned accept_proxy_pending(const Accept *a) {
        return a->proxy_pending.n;
}

const Refusals *accept_refusals(const Accept *a) {
        return a->refusals;
}

int accept_check(const Accept *a, const char **ret_what) {
        unsigned counted = 0, by_source = 0, n;
        size_t pos = 0;
        const void *key;
        int32_t v;

        for (const ConnList *l = &a->queue; l; l = l == &a->queue ? &a->grace : NULL)
                for (const Conn *c = l->head; c; c = c->next)
                        counted += c->counted;
        while (source_table_next(a->queued_sources, &pos, &key, &v))
                by_source += (unsigned) v;
        n = a->queue.n + a->grace.n;
        if (by_source != counted || counted != n) {
                *ret_what = "queued per-source counts do not sum to the queued connections";
                return -EUCLEAN;
        }
        if (a->grace.n > ACCEPT_GRACE_MAX) {
                *ret_what = "more connections in the grace wait than ACCEPT_GRACE_MAX";
                return -EUCLEAN;
        }
        return 0;
}
