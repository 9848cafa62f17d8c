/* The master's side of echod-spawner: start its processes, hand them connections in order, read
 * what they report, retire and replace them. spawner.h says what this owns and promises; how a
 * process of it is executed, and where its binary is, is spawner-exec.c's. */
#include "echod/spawner.h"
#include "echod/spawner-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "echod/spawn-proto.h"
#include "shared/io.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

/* a process that dies within this of its start is started again only after it */
#define RESTART_HOLDOFF_USEC USEC_PER_SEC
/* how long a retired process, or every process at exit, gets to go after its socket is closed */
#define STOP_WAIT_USEC (2 * USEC_PER_SEC)
/* no progress for this long with work waiting: "stuck" in status */
#define STUCK_USEC USEC_PER_SEC

typedef struct Handoff {
        SpawnConnection req;
        int fd; /* borrowed: the caller's until started/failed/lost */
        struct Handoff *next;
} Handoff;

typedef struct HandoffList {
        Handoff *head, *tail;
        unsigned n;
} HandoffList;

struct SpawnerProc {
        Spawner *owner;
        unsigned gen;
        pid_t pid;
        int fd;
        sd_event_source *io;
        sd_event_source *retire_timer;
        bool retiring;
        HandoffList in_flight; /* sent, STARTED/FAILED not seen yet, in order */
        uint64_t started_usec;
        SpawnerProc *next;
};

struct Spawner {
        sd_event *event;
        SpawnKind kind;
        SpawnerCallbacks cb;
        void *userdata;
        const Sandbox *sandbox; /* what the current process runs, and a restart gets */
        SpawnerProc *current;   /* NULL between a death and its restart */
        SpawnerProc *procs;     /* every process not reaped yet, current included */
        HandoffList queue;      /* admitted, not sent */
        uint64_t progress_usec; /* the current process last took or reported a hand-off, or got work */
        uint64_t stopped_usec;  /* since when the current process is seen stopped; 0: it is not */
        sd_event_source *restart_timer, *deadline_timer, *watch_timer;
        unsigned next_gen, restarts;
        bool stopping;
};

static void list_push(HandoffList *l, Handoff *h) {
        h->next = NULL;
        if (l->tail)
                l->tail->next = h;
        else
                l->head = h;
        l->tail = h;
        l->n++;
}

static Handoff *list_pop(HandoffList *l) {
        Handoff *h = l->head;

        if (!h)
                return NULL;
        l->head = h->next;
        if (!l->head)
                l->tail = NULL;
        l->n--;
        h->next = NULL;
        return h;
}

/* --- the deadline ---------------------------------------------------------------------------- */

/* Hand-offs the current process owes us: queued for it, or sent and not reported. */
static unsigned waiting(const Spawner *s) {
        return s->queue.n + (s->current ? s->current->in_flight.n : 0);
}

static void proc_kill(SpawnerProc *p);
static int on_restart(sd_event_source *src, uint64_t usec, void *userdata);

/* Stopped, or stuck: the current process is killed and replaced now; what it took is resolved
 * when it is reaped (lost()), what is queued goes to the replacement, its children are the
 * master's (their exits, which it no longer reports, are seen at once). */
static void replace_stuck(Spawner *s, uint64_t stalled_usec) {
        SpawnerProc *p = s->current;

        s->cb.stuck(s->userdata, p->pid, stalled_usec, waiting(s));
        p->retiring = true;
        s->current = NULL;
        s->stopped_usec = 0;
        proc_kill(p);
        (void) sd_event_source_set_enabled(s->deadline_timer, SD_EVENT_OFF);
        if (!s->stopping) {
                s->restart_timer = sd_event_source_disable_unref(s->restart_timer);
                if (sd_event_add_time_relative(s->event, &s->restart_timer, CLOCK_MONOTONIC, 0, 0, on_restart, s) < 0)
                        s->cb.restarted(s->userdata, 0, -ENOMEM);
        }
}

static int on_deadline(sd_event_source *src, uint64_t usec, void *userdata) {
        Spawner *s = userdata;
        uint64_t now = now_usec();

        if (!s->current || waiting(s) == 0)
                return sd_event_source_set_enabled(src, SD_EVENT_OFF);
        if (now < s->progress_usec + SPAWNER_HANDOFF_TIMEOUT_USEC) {
                /* it moved since: look again a deadline after its last progress */
                (void) sd_event_source_set_time(src, s->progress_usec + SPAWNER_HANDOFF_TIMEOUT_USEC);
                return sd_event_source_set_enabled(src, SD_EVENT_ONESHOT);
        }
        replace_stuck(s, now - s->progress_usec);
        return 0;
}

/* Every second: a current process stopped for SPAWNER_HANDOFF_TIMEOUT_USEC is stuck even with no
 * hand-off owed, for it reaps and reports nothing: the clients of its children that died would
 * wait for their end (the master holds each connection until its process is known gone). */
static int on_watch(sd_event_source *src, uint64_t usec, void *userdata) {
        Spawner *s = userdata;
        uint64_t now = now_usec();

        if (!s->current || !spawner_proc_stopped(s->current->pid))
                s->stopped_usec = 0;
        else if (s->stopped_usec == 0)
                s->stopped_usec = now;
        else if (now >= s->stopped_usec + SPAWNER_HANDOFF_TIMEOUT_USEC)
                replace_stuck(s, now - s->stopped_usec);
        return sd_event_source_set_time(src, usec + USEC_PER_SEC);
}

/* Work was given to a process that owed nothing: its clock starts now. */
static void deadline_start(Spawner *s) {
        s->progress_usec = now_usec();
        if (!s->deadline_timer) {
                if (sd_event_add_time(s->event, &s->deadline_timer, CLOCK_MONOTONIC,
                                      s->progress_usec + SPAWNER_HANDOFF_TIMEOUT_USEC, 100 * USEC_PER_MSEC,
                                      on_deadline, s) < 0)
                        s->deadline_timer = NULL; /* no deadline, but the service goes on */
                return;
        }
        if (sd_event_source_get_enabled(s->deadline_timer, NULL) == 0) {
                (void) sd_event_source_set_time(s->deadline_timer, s->progress_usec + SPAWNER_HANDOFF_TIMEOUT_USEC);
                (void) sd_event_source_set_enabled(s->deadline_timer, SD_EVENT_ONESHOT);
        }
}

/* --- sending --------------------------------------------------------------------------------- */

/* Send one hand-off. Returns 0, -EAGAIN (later) or another -errno. */
static int send_connection(SpawnerProc *p, Handoff *h) {
        return send_with_fd(p->fd, &h->req, sizeof(h->req), h->fd);
}

static void update_io(SpawnerProc *p) {
        bool more = p == p->owner->current && p->owner->queue.head;

        if (p->io)
                (void) sd_event_source_set_io_events(p->io, EPOLLIN | (more ? EPOLLOUT : 0));
}

/* Send the queue to p, if it is current, until its socket is full. A socket that fails otherwise
 * is left alone: the process is dying, and its reaping says so. */
static void flush(SpawnerProc *p) {
        Spawner *s = p->owner;

        if (p->fd < 0)
                return;
        while (p == s->current && !p->retiring && s->queue.head) {
                Handoff *h = s->queue.head;
                if (send_connection(p, h) < 0)
                        break;
                list_pop(&s->queue);
                list_push(&p->in_flight, h);
                s->progress_usec = now_usec();
        }
        update_io(p);
}

void spawner_handoff(Spawner *s, int fd, int slot, const WorkerParams *params, const char *title) {
        Handoff *h = calloc(1, sizeof(Handoff));

        if (!h) {
                s->cb.failed(s->userdata, slot, -ENOMEM);
                return;
        }
        h->fd = fd;
        h->req = (SpawnConnection) { .type = SPAWN_CONNECTION, .slot = (uint32_t) slot, .kind = s->kind,
                                     .params = *params };
        snprintf(h->req.title, sizeof(h->req.title), "%s", title);
        if (waiting(s) == 0)
                deadline_start(s);
        list_push(&s->queue, h);
        if (s->current)
                flush(s->current);
}

unsigned spawner_drop_queue(Spawner *s) {
        unsigned n = 0;
        Handoff *h;

        s->stopping = true;
        s->restart_timer = sd_event_source_disable_unref(s->restart_timer);
        while ((h = list_pop(&s->queue))) {
                int slot = (int) h->req.slot;
                free(h);
                s->cb.failed(s->userdata, slot, -ECANCELED);
                n++;
        }
        for (SpawnerProc *p = s->procs; p; p = p->next)
                update_io(p);
        return n;
}

void spawner_signal(Spawner *s, int sig) {
        /* each process leads a group its children are in; until the master reaps it, neither its
         * pid nor its group can name anyone else. It keeps SIGTERM blocked; SIGKILL ends it too. */
        for (SpawnerProc *p = s->procs; p; p = p->next)
                if (p->pid > 0)
                        (void) kill(-p->pid, sig);
}

void spawner_kill(Spawner *s) {
        for (SpawnerProc *p = s->procs; p; p = p->next)
                proc_kill(p);
}

/* --- events ---------------------------------------------------------------------------------- */

static void proc_kill(SpawnerProc *p) {
        if (p->pid > 0)
                (void) kill(p->pid, SIGKILL);
}

/* The in-flight hand-off an event is about: the oldest one, which must name the same slot. A
 * process that says otherwise is not the spawner we started: it is killed, and what it held is
 * resolved when it is reaped. */
static Handoff *take_in_flight(SpawnerProc *p, uint32_t slot) {
        if (!p->in_flight.head || p->in_flight.head->req.slot != slot) {
                proc_kill(p);
                return NULL;
        }
        return list_pop(&p->in_flight);
}

static unsigned handle_event(SpawnerProc *p, const SpawnEvent *e) {
        Spawner *s = p->owner;
        Handoff *h;

        if (p == s->current)
                s->progress_usec = now_usec();
        switch (e->type) {
        case SPAWN_STARTED:
                if ((h = take_in_flight(p, e->slot))) {
                        free(h);
                        s->cb.started(s->userdata, (int) e->slot, e->pid, p->gen);
                }
                return 0;
        case SPAWN_FAILED:
                if ((h = take_in_flight(p, e->slot))) {
                        free(h);
                        s->cb.failed(s->userdata, (int) e->slot, e->value < 0 ? e->value : -EIO);
                }
                return 1;
        case SPAWN_EXITED:
                s->cb.exited(s->userdata, e->pid, e->value);
                return 1;
        default:
                proc_kill(p);
                return 0;
        }
}

static unsigned read_events(SpawnerProc *p) {
        static SpawnEvent ev[SPAWN_EVENTS_MAX];
        unsigned ended = 0;
        ssize_t n;

        while (p->fd >= 0 && (n = recv(p->fd, ev, sizeof(ev), MSG_DONTWAIT)) > 0)
                for (size_t i = 0; i < (size_t) n / sizeof(SpawnEvent); i++)
                        ended += handle_event(p, &ev[i]);
        return ended;
}

unsigned spawner_dispatch(Spawner *s) {
        unsigned ended = 0;

        for (SpawnerProc *p = s->procs; p; p = p->next)
                ended += read_events(p);
        return ended;
}

static int on_proc_io(sd_event_source *src, int fd, uint32_t revents, void *userdata) {
        SpawnerProc *p = userdata;

        if (revents & EPOLLOUT)
                flush(p);
        (void) read_events(p);
        return 0;
}

/* --- processes ------------------------------------------------------------------------------- */

static void close_channel(SpawnerProc *p) {
        p->io = sd_event_source_disable_unref(p->io);
        p->fd = safe_close(p->fd);
}

static int proc_start(Spawner *s, const Sandbox *sb, SpawnerProc **ret) {
        _cleanup_(closep) int mine = -1, theirs = -1;
        static SpawnSandbox req;
        int pair[2], r;
        pid_t pid;

        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
                return negative_errno();
        mine = pair[0];
        /* well above the numbers it is moved to, so no dup2 is a no-op that keeps O_CLOEXEC */
        theirs = fcntl(pair[1], F_DUPFD_CLOEXEC, 10);
        safe_close(pair[1]);
        if (theirs < 0)
                return negative_errno();
        SpawnerProc *p = calloc(1, sizeof(SpawnerProc));
        if (!p)
                return -ENOMEM;

        r = spawner_exec(theirs, &pid);
        if (r < 0) {
                free(p);
                return r;
        }

        *p = (SpawnerProc) { .owner = s, .gen = ++s->next_gen, .pid = pid, .fd = TAKE_FD(mine),
                             .started_usec = now_usec(), .next = s->procs };
        s->procs = p;
        /* the first message, before any connection: the sandbox every child inherits */
        sandbox_request(sb, &req);
        /* a connection never waits for a fork; a UDP worker is forked rarely, and is long-lived */
        req.spare = s->kind == SPAWN_KIND_CONNECTION;
        r = send(p->fd, &req, sizeof(req), MSG_DONTWAIT | MSG_NOSIGNAL) < 0 ? negative_errno() : 0;
        if (r >= 0)
                r = sd_event_add_io(s->event, &p->io, p->fd, EPOLLIN, on_proc_io, p);
        /* exits are seen before the next admission */
        if (r >= 0)
                r = sd_event_source_set_priority(p->io, SD_EVENT_PRIORITY_IMPORTANT);
        if (r < 0) {
                /* it exits at the end of its socket and is reaped like any retired one */
                p->retiring = true;
                close_channel(p);
                proc_kill(p);
                return r;
        }
        *ret = p;
        return 0;
}

static int on_retire_timeout(sd_event_source *src, uint64_t usec, void *userdata) {
        proc_kill(userdata);
        return 0;
}

/* It reads what was sent before, reports, and exits at the end of the stream; one that does not
 * within STOP_WAIT_USEC is killed (its children go on, adopted). */
static void proc_retire(SpawnerProc *p) {
        if (p->retiring)
                return;
        p->retiring = true;
        if (p->fd < 0 || shutdown(p->fd, SHUT_WR) < 0) {
                proc_kill(p);
                return;
        }
        update_io(p);
        if (sd_event_add_time_relative(p->owner->event, &p->retire_timer, CLOCK_MONOTONIC, STOP_WAIT_USEC, 0,
                                       on_retire_timeout, p) < 0)
                proc_kill(p);
}

int spawner_start(Spawner *s, const Sandbox *sb) {
        SpawnerProc *p;
        int r = proc_start(s, sb, &p);

        if (r < 0)
                return r;
        s->sandbox = sb;
        s->current = p;
        flush(p);
        if (!s->watch_timer &&
            (sd_event_add_time_relative(s->event, &s->watch_timer, CLOCK_MONOTONIC, USEC_PER_SEC, USEC_PER_SEC / 10,
                                        on_watch, s) < 0 ||
             sd_event_source_set_enabled(s->watch_timer, SD_EVENT_ON) < 0))
                s->watch_timer = sd_event_source_disable_unref(s->watch_timer); /* the deadline still holds */
        return 0;
}

int spawner_prepare(Spawner *s, const Sandbox *sb, SpawnerProc **ret) {
        return proc_start(s, sb, ret);
}

void spawner_commit(Spawner *s, SpawnerProc *p, const Sandbox *sb) {
        if (s->current)
                proc_retire(s->current);
        s->current = p;
        s->sandbox = sb;
        s->restart_timer = sd_event_source_disable_unref(s->restart_timer);
        s->restarts++;
        if (waiting(s) > 0)
                deadline_start(s);
        flush(p);
}

pid_t spawner_proc_pid(const SpawnerProc *p) {
        return p->pid;
}

void spawner_abort(Spawner *s, SpawnerProc *p) {
        proc_retire(p);
}

static int on_restart(sd_event_source *src, uint64_t usec, void *userdata) {
        Spawner *s = userdata;
        SpawnerProc *p;
        int r;

        s->restart_timer = sd_event_source_disable_unref(s->restart_timer);
        if (s->stopping || s->current)
                return 0;
        r = proc_start(s, s->sandbox, &p);
        if (r < 0) {
                s->cb.restarted(s->userdata, 0, r);
                return sd_event_add_time_relative(s->event, &s->restart_timer, CLOCK_MONOTONIC, RESTART_HOLDOFF_USEC,
                                                  0, on_restart, s);
        }
        s->current = p;
        s->restarts++;
        s->cb.restarted(s->userdata, p->pid, 0);
        if (waiting(s) > 0)
                deadline_start(s);
        flush(p);
        return 0;
}

static void proc_free(SpawnerProc *p) {
        Handoff *h;

        close_channel(p);
        sd_event_source_disable_unref(p->retire_timer);
        while ((h = list_pop(&p->in_flight)))
                free(h);
        free(p);
}

bool spawner_reaped(Spawner *s, pid_t pid, int status) {
        SpawnerProc **pp, *p;
        Handoff *h;

        for (pp = &s->procs; *pp && (*pp)->pid != pid; pp = &(*pp)->next)
                ;
        if (!(p = *pp))
                return false;
        *pp = p->next;
        bool was_current = p == s->current;
        bool retired = p->retiring && WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (was_current)
                s->current = NULL;

        /* what it sent before dying is still true */
        (void) read_events(p);
        close_channel(p);
        s->cb.gone(s->userdata, p->gen, pid, status, retired);
        while ((h = list_pop(&p->in_flight))) {
                int slot = (int) h->req.slot;
                free(h);
                s->cb.lost(s->userdata, slot, p->gen);
        }
        uint64_t lived = now_usec() - p->started_usec;
        proc_free(p);

        if (was_current && !s->stopping) {
                s->restart_timer = sd_event_source_disable_unref(s->restart_timer);
                if (sd_event_add_time_relative(s->event, &s->restart_timer, CLOCK_MONOTONIC,
                                               lived < RESTART_HOLDOFF_USEC ? RESTART_HOLDOFF_USEC : 0, 0,
                                               on_restart, s) < 0)
                        s->cb.restarted(s->userdata, 0, -ENOMEM);
        }
        return true;
}

int spawner_new(sd_event *event, SpawnKind kind, const SpawnerCallbacks *cb, void *userdata, Spawner **ret) {
        Spawner *s = calloc(1, sizeof(Spawner));

        if (!s)
                return -ENOMEM;
        *s = (Spawner) { .event = sd_event_ref(event), .kind = kind, .cb = *cb, .userdata = userdata };
        *ret = s;
        return 0;
}

Spawner *spawner_free(Spawner *s) {
        Handoff *h;

        if (!s)
                return NULL;
        s->restart_timer = sd_event_source_disable_unref(s->restart_timer);
        s->deadline_timer = sd_event_source_disable_unref(s->deadline_timer);
        s->watch_timer = sd_event_source_disable_unref(s->watch_timer);
        while ((h = list_pop(&s->queue)))
                free(h);
        uint64_t deadline = now_usec() + STOP_WAIT_USEC;
        while (s->procs) {
                SpawnerProc *p = s->procs;
                s->procs = p->next;
                close_channel(p);
                /* it exits at the end of its socket; one that does not (stopped, stuck) is killed */
                _cleanup_(closep) int pidfd = pidfd_open(p->pid, 0);
                uint64_t now = now_usec();
                struct pollfd pfd = { .fd = pidfd, .events = POLLIN };
                if (pidfd < 0 || now >= deadline ||
                    poll(&pfd, 1, (int) ((deadline - now) / USEC_PER_MSEC)) <= 0)
                        proc_kill(p);
                (void) waitpid(p->pid, NULL, 0);
                proc_free(p);
        }
        spawner_unpin(); /* nothing starts after this */
        sd_event_unref(s->event);
        free(s);
        return NULL;
}

const char *spawner_state_name(SpawnerState state) {
        return state == SPAWNER_STUCK ? "stuck" : state == SPAWNER_RESTARTING ? "restarting" : "running";
}

void spawner_status(const Spawner *s, SpawnerStatus *ret) {
        uint64_t now = now_usec();

        *ret = (SpawnerStatus) { .pid = s->current ? s->current->pid : 0, .restarts = s->restarts,
                                 .queued = s->queue.n };
        if (s->current && waiting(s) > 0 && now > s->progress_usec)
                ret->stalled_usec = now - s->progress_usec;
        ret->state = !s->current                       ? SPAWNER_RESTARTING
                     : ret->stalled_usec >= STUCK_USEC ? SPAWNER_STUCK
                                                       : SPAWNER_RUNNING;
        for (const SpawnerProc *p = s->procs; p; p = p->next) {
                ret->in_flight += p->in_flight.n;
                ret->retiring += p != s->current;
        }
}
