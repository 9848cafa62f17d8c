/* From accept() to fork(): PROXY header, access list, rates, limits, the wait queue, refusals.
 *
 * Admission happens before fork, so a refused connection costs an accept and a close, never a
 * process. Refusals are logged once and then summarised per window, never one line each. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echod/log.h"
#include "echod/manager-internal.h"
#include "shared/macro.h"
#include "shared/proxy.h"
#include "shared/timeutil.h"

#define ACCEPT_BATCH 64
#define ACCEPT_BACKOFF_USEC (100 * USEC_PER_MSEC)
#define REFUSAL_WINDOW_USEC (10 * USEC_PER_SEC)
#define PROXY_PENDING_MAX 1024
#define SOURCE_RATES_MAX 65536

AdmitLimits manager_limits(const Manager *m) {
        return (AdmitLimits) {
                .max_connections = m->config->max_connections,
                .max_per_source = m->config->max_per_source,
                .prefix_v4 = m->config->source_prefix_v4,
                .prefix_v6 = m->config->source_prefix_v6,
        };
}

/* --- connections not yet forked ------------------------------------------------------------ */

void list_append(ConnList *l, Conn *c) {
        c->prev = l->tail;
        c->next = NULL;
        if (l->tail)
                l->tail->next = c;
        else
                l->head = c;
        l->tail = c;
        l->n++;
}

void list_remove(ConnList *l, Conn *c) {
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

void conn_free(Conn *c) {
        free(c->header);
        sd_event_source_disable_unref(c->io);
        sd_event_source_disable_unref(c->timer);
        safe_close(c->fd);
        free(c);
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

/* Count a refusal; log it if it opens a window, otherwise it goes into the window's summary. */
static void note_refusal(Manager *m, Refusal reason, const Conn *c, const char *detail, int error) {
        char peer[2 * IPADDR_STR_MAX + 8];
        /* summaries group by the source key; before admission there is none yet */
        IpAddr group = c->source.family ? c->source : c->peer;

        if (!c->source.family)
                ipaddr_mask(&group, group.family == AF_INET ? 32 : 128);
        m->counters.refused[reason]++;
        refusal_top_note(&m->refused_sources, &group);
        if (!refusal_window_note(&m->refusal_windows[reason], &group, now_usec()))
                return;
        log_format_peer(&c->peer, &c->via, c->proxied, peer);
        if (error)
                log_full(LOG_ERR, error, MESSAGE_ID_REFUSED, "refused connection from %s: %s", peer,
                         refusal_name(reason));
        else
                log_full(LOG_WARNING, 0, MESSAGE_ID_REFUSED, "refused connection from %s: %s (%s)", peer,
                         refusal_name(reason), detail);

        if (!m->refusal_timer)
                (void) sd_event_add_time_relative(m->event, &m->refusal_timer, CLOCK_MONOTONIC,
                                                  REFUSAL_WINDOW_USEC, USEC_PER_SEC / 10, on_refusal_timer, m);
        else if (sd_event_source_get_enabled(m->refusal_timer, NULL) == 0) {
                (void) sd_event_source_set_time_relative(m->refusal_timer, REFUSAL_WINDOW_USEC);
                (void) sd_event_source_set_enabled(m->refusal_timer, SD_EVENT_ONESHOT);
        }
}

/* Refuse: accepted and closed at once. Frees c. */
static void refuse(Manager *m, Conn *c, Refusal reason, const char *detail, int error) {
        note_refusal(m, reason, c, detail, error);
        if (c->counted)
                source_table_remove(m->sources, &c->source);
        conn_free(c);
}

/* --- fork ---------------------------------------------------------------------------------- */

/* Hand c to the spawner, which forks its child. Takes c. */
static void spawn(Manager *m, Conn *c) {
        int slot, r;

        slot = child_table_reserve(m->children);
        if (slot < 0) {
                refuse(m, c, REFUSE_CAPACITY, "no free slot", 0);
                return;
        }

        Child child = {
                .proxied = c->proxied,
                .peer = c->peer,
                .via = c->via,
                .local = c->local,
                .source = c->source,
                .start_usec = now_usec(),
        };
        r = child_table_commit(m->children, slot, &child);
        if (r >= 0 && !c->counted)
                r = source_table_add(m->sources, &c->source);
        if (r < 0) /* cannot happen: both tables hold SLOTS_MAX */
                log_error_errno(r, "Failed to account a connection");
        c->counted = false; /* the slot holds the source count from here */
        m->counters.accepted++;
        m->counters.peak = MAX(m->counters.peak, child_table_active(m->children));
        c->slot = slot;
        spawner_handoff(m, c);
}

void accept_spawn_failed(Manager *m, int slot, int error) {
        uint64_t in, out;
        Child child;

        if (child_table_release_slot(m->children, slot, &child, &in, &out) < 0)
                return;
        source_table_remove(m->sources, &child.source);
        m->counters.accepted--;
        if (error == -ECANCELED)
                return;
        Conn c = { .peer = child.peer, .via = child.via, .proxied = child.proxied, .local = child.local,
                   .source = child.source };
        note_refusal(m, REFUSE_FORK, &c, NULL, error);
}

/* --- the wait queue (at_capacity = queue) --------------------------------------------------- */

static int on_queue_timer(sd_event_source *s, uint64_t usec, void *userdata);

static void queue_arm_timer(Manager *m) {
        if (!m->queue.head) {
                if (m->queue_timer)
                        (void) sd_event_source_set_enabled(m->queue_timer, SD_EVENT_OFF);
                return;
        }
        uint64_t when = m->queue.head->since + (uint64_t) m->config->queue_timeout * USEC_PER_SEC;
        if (!m->queue_timer)
                (void) sd_event_add_time(m->event, &m->queue_timer, CLOCK_MONOTONIC, when, USEC_PER_MSEC * 10,
                                         on_queue_timer, m);
        else {
                (void) sd_event_source_set_time(m->queue_timer, when);
                (void) sd_event_source_set_enabled(m->queue_timer, SD_EVENT_ONESHOT);
        }
}

static void queue_update_full(Manager *m) {
        bool full = m->queue.n >= m->config->backlog;

        if (full != m->queue_full) {
                m->queue_full = full;
                manager_update_listeners(m);
        }
}

/* Refuse the queued connections that waited queue_timeout; admit as many as there are slots. */
static void queue_run(Manager *m) {
        uint64_t timeout = (uint64_t) m->config->queue_timeout * USEC_PER_SEC, now = now_usec();
        char detail[64];

        while (m->queue.head) {
                Conn *c = m->queue.head;
                if (now - c->since >= timeout) {
                        list_remove(&m->queue, c);
                        snprintf(detail, sizeof(detail), "waited queue_timeout=%u s", m->config->queue_timeout);
                        refuse(m, c, REFUSE_CAPACITY, detail, 0);
                } else if (child_table_active(m->children) < m->config->max_connections && !m->stopping) {
                        list_remove(&m->queue, c);
                        spawn(m, c);
                } else
                        break;
        }
        queue_arm_timer(m);
        queue_update_full(m);
}

static int on_queue_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        queue_run(userdata);
        return 0;
}

void accept_slots_freed(Manager *m) {
        if (m->queue.n > 0)
                queue_run(m);
}

/* --- admission ----------------------------------------------------------------------------- */

static void admit(Manager *m, Conn *c) {
        const Config *cfg = m->config;
        AdmitLimits limits = manager_limits(m);
        uint64_t now = now_usec();
        char detail[128], prefix[IPADDR_STR_MAX];
        Refusal verdict;

        if (!acl_allows(m->acl, &c->peer)) {
                refuse(m, c, REFUSE_ACL, "denied by allow/deny", 0);
                return;
        }
        admit_source_key(&c->peer, &limits, &c->source);
        ipaddr_format_prefix(&c->source, prefix);
        if (cfg->per_source_rate > 0 &&
            !rate_table_take(m->source_rates, &c->source, cfg->per_source_rate,
                             config_burst(cfg->per_source_rate, cfg->per_source_burst), now)) {
                snprintf(detail, sizeof(detail), "per_source_rate=%g/s exceeded for %s", cfg->per_source_rate, prefix);
                refuse(m, c, REFUSE_PER_SOURCE_RATE, detail, 0);
                return;
        }
        if (cfg->connection_rate > 0 &&
            !token_bucket_take(&m->rate, cfg->connection_rate, config_burst(cfg->connection_rate, cfg->connection_burst),
                               now)) {
                snprintf(detail, sizeof(detail), "connection_rate=%g/s exceeded", cfg->connection_rate);
                refuse(m, c, REFUSE_RATE, detail, 0);
                return;
        }

        unsigned busy = child_table_active(m->children) + m->queue.n;
        verdict = admit_connection(m->sources, &limits, busy, &c->source);
        /* Children that finished but are not reaped yet would still count: a client reconnecting
         * the moment it has our FIN would be refused for the connection it just finished. Only
         * on this (rare) path: reap what the spawner has reported, then leave out the children
         * that have sent their last FIN but whose exit is still on its way. */
        if (verdict != ADMIT_OK) {
                unsigned same_source, finishing;

                reap_children(m);
                busy = child_table_active(m->children) + m->queue.n;
                finishing = child_table_finishing(m->children, &c->source, &same_source);
                verdict = admit_counts(&limits, busy - finishing,
                                       source_table_count(m->sources, &c->source) - same_source);
        }
        switch (verdict) {
        case ADMIT_OK:
                spawn(m, c);
                return;
        case REFUSE_CAPACITY:
                if (cfg->at_capacity == AT_CAPACITY_QUEUE) {
                        c->since = now;
                        c->counted = source_table_add(m->sources, &c->source) >= 0;
                        list_append(&m->queue, c);
                        if (m->queue.n == 1)
                                queue_arm_timer(m);
                        queue_update_full(m);
                        return;
                }
                snprintf(detail, sizeof(detail), "max_connections=%u reached", cfg->max_connections);
                refuse(m, c, verdict, detail, 0);
                return;
        case REFUSE_PER_SOURCE:
                snprintf(detail, sizeof(detail), "max_per_source=%u reached for %s", cfg->max_per_source, prefix);
                refuse(m, c, verdict, detail, 0);
                return;
        default:
                refuse(m, c, verdict, "?", 0);
                return;
        }
}

/* --- PROXY protocol ------------------------------------------------------------------------ */

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

static void proxy_done_waiting(Manager *m, Conn *c) {
        list_remove(&m->proxy_pending, c);
        c->io = sd_event_source_disable_unref(c->io);
        c->timer = sd_event_source_disable_unref(c->timer);
}

static int on_proxy_readable(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Conn *c = userdata;
        Manager *m = c->manager;
        int r = proxy_read_header(c);

        if (r == 0)
                return 0;
        proxy_done_waiting(m, c);
        if (r < 0)
                refuse(m, c, REFUSE_PROXY, proxy_error_detail(r), 0);
        else
                admit(m, c);
        return 0;
}

static int on_proxy_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Conn *c = userdata;
        Manager *m = c->manager;
        char detail[64];

        proxy_done_waiting(m, c);
        snprintf(detail, sizeof(detail), "no header within %u s", m->config->proxy_timeout);
        refuse(m, c, REFUSE_PROXY, detail, 0);
        return 0;
}

static void proxy_start(Manager *m, Conn *c) {
        int r;

        if (!proxy_trusted(m->config, &c->via)) {
                refuse(m, c, REFUSE_PROXY, "untrusted sender", 0);
                return;
        }
        r = proxy_read_header(c); /* usually the header came with the handshake's first segment */
        if (r > 0) {
                admit(m, c);
                return;
        }
        if (r < 0) {
                refuse(m, c, REFUSE_PROXY, proxy_error_detail(r), 0);
                return;
        }
        if (m->proxy_pending.n >= PROXY_PENDING_MAX) {
                refuse(m, c, REFUSE_PROXY, "too many connections waiting for a header", 0);
                return;
        }
        r = sd_event_add_io(m->event, &c->io, c->fd, EPOLLIN, on_proxy_readable, c);
        if (r >= 0)
                r = sd_event_add_time_relative(m->event, &c->timer, CLOCK_MONOTONIC,
                                               (uint64_t) m->config->proxy_timeout * USEC_PER_SEC,
                                               USEC_PER_MSEC * 10, on_proxy_timeout, c);
        if (r < 0) {
                refuse(m, c, REFUSE_PROXY, NULL, r);
                return;
        }
        list_append(&m->proxy_pending, c);
}

/* --- accept -------------------------------------------------------------------------------- */

static int on_backoff_over(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        m->backoff_timer = sd_event_source_unref(m->backoff_timer);
        manager_update_listeners(m);
        return 0;
}

/* Out of fds or memory: stop accepting for a moment instead of spinning on a ready listener. */
static void accept_backoff(Manager *m, int error) {
        if (m->backoff_timer)
                return;
        log_warning_errno(error, "accept() failed, pausing new connections for %llu ms",
                          (unsigned long long) (ACCEPT_BACKOFF_USEC / USEC_PER_MSEC));
        (void) sd_event_add_time_relative(m->event, &m->backoff_timer, CLOCK_MONOTONIC, ACCEPT_BACKOFF_USEC,
                                          0, on_backoff_over, m);
        manager_update_listeners(m);
}

static void handle_connection(Manager *m, Listener *l, int fd, const SockAddr *sa, socklen_t len) {
        Conn *c = calloc(1, sizeof(Conn));

        if (!c) {
                safe_close(fd);
                return;
        }
        c->manager = m;
        c->fd = fd;
        c->local = l->bound;
        if (ipaddr_from_sockaddr(&sa->sa, len, &c->peer) < 0) {
                conn_free(c);
                return;
        }
        c->via = c->peer;
        if (l->proxy)
                proxy_start(m, c);
        else
                admit(m, c);
}

int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
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
                /* blocking, as the child sleeps in recv() on it: the master only ever
                 * reads it with MSG_DONTWAIT (a PROXY header), and the child is spared
                 * the two fcntl() calls to clear O_NONBLOCK */
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
                if (m->queue_full)
                        return 0; /* the listeners are off now: the kernel backlog holds the rest */
        }
        return 0;
}

/* --- configuration and stop ------------------------------------------------------------------ */

int accept_apply_config(Manager *m, const Config *old) {
        const Config *c = m->config;
        Acl *acl;
        int r;

        if (!old || old->sandbox != c->sandbox) {
                Sandbox *sb;
                r = sandbox_new(c->sandbox, &sb);
                if (r < 0) {
                        if (old)
                                m->config->sandbox = old->sandbox;
                        return r;
                }
                sandbox_free(m->sandbox);
                m->sandbox = sb;
                /* the running spawner entered the old one for good: a new spawner takes over */
                if (old)
                        spawner_retire(m);
        }
        r = acl_new(&c->allow, &c->deny, &acl);
        if (r < 0)
                return r;
        acl_free(m->acl);
        m->acl = acl;
        if (!m->source_rates) {
                r = rate_table_new(SOURCE_RATES_MAX, &m->source_rates);
                if (r < 0)
                        return r;
        }
        /* per-source buckets are keyed by the grouping; a new rate starts them afresh */
        if (old && (old->per_source_rate != c->per_source_rate || old->per_source_burst != c->per_source_burst ||
                    old->source_prefix_v4 != c->source_prefix_v4 || old->source_prefix_v6 != c->source_prefix_v6))
                rate_table_clear(m->source_rates);
        /* queued connections: the new limits and mode apply at once */
        if (m->queue.n > 0) {
                if (c->at_capacity == AT_CAPACITY_REFUSE)
                        while (m->queue.head) {
                                Conn *q = m->queue.head;
                                list_remove(&m->queue, q);
                                refuse(m, q, REFUSE_CAPACITY, "at_capacity is now refuse", 0);
                        }
                queue_run(m);
        }
        queue_update_full(m);
        return 0;
}

unsigned accept_drop_pending(Manager *m) {
        unsigned n = 0;

        for (ConnList *l = &m->proxy_pending; l; l = l == &m->proxy_pending ? &m->queue : NULL)
                while (l->head) {
                        Conn *c = l->head;
                        list_remove(l, c);
                        if (c->counted)
                                source_table_remove(m->sources, &c->source);
                        conn_free(c);
                        n++;
                }
        n += m->handoff.n;
        spawner_drop_handoff(m);
        queue_arm_timer(m);
        return n;
}
