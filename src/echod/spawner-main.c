/* echod-spawner: forks one child per connection the master hands over, and reaps them.
 *
 * The master starts it once (spawner.c) with its end of a SOCK_SEQPACKET socketpair as fd 3,
 * /dev/null as stdio, in a process group of its own (the master signals its children through
 * it: the sandbox leaves this process no kill()). It is linked statically and allocates almost nothing, so a
 * fork() copies a dozen mappings and a few dirty pages instead of the master's address space:
 * that is the whole point of it (bench/FINDINGS.md). It never logs (the master does, from the
 * events it is sent) and exits when the master's end closes.
 *
 * Loop: poll the socket and a SIGCHLD signalfd; reap every exited child; read requests (hand each
 * connection to the spare, or fork for it; store the sandbox); send the events in batches; fork a
 * spare if there is none. A master that stops reading makes the spawner stop reading and reaping,
 * never grow.
 *
 * Reaping never scans every child per connection. waitpid(-1) walks the kernel's whole list of
 * this process's children (it keeps no list of zombies): with 17,000 held connections one call
 * takes ~1.9 ms here, and 3 µs with 100 (bench/FINDINGS.md). A SIGCHLD names the child that
 * exited, and waitpid(pid) looks that one up directly (0.4 µs at any count). But SIGCHLD is not
 * queued: a child that exits while one is pending is named by none, and only a scan finds it. So
 * a scan runs only after a SIGCHLD, and only once SCAN_RATIO times the last one's cost per child
 * it found (its whole cost if it found none) has passed, at most SCAN_WAIT_MAX_USEC: scans that
 * find nothing take at most 1/(1 + SCAN_RATIO) of the time, a burst of exits (a drain, many
 * clients leaving at once) is reaped at the pace of the scans that find them, and a child nobody
 * named is reported within that wait.
 *
 * The spare: a child forked ahead of need, sandboxed like any other, waiting on the spare channel
 * (a socketpair made before the sandbox, which allows no new one) for the one connection it will
 * serve. A connection handed to it waits for no fork; the next spare is forked while it echoes.
 * One spare at a time, and the next is forked only once the last one answered that it took its
 * connection (or died): two processes never wait on the channel together, so the connection goes
 * to the pid the master is told. A spare that dies unused is replaced at once; if its replacement
 * dies unused too, the next connection is forked for directly first, so a spare that cannot start
 * never becomes a fork loop. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "echod/child.h"
#include "shared/hashmap.h"
#include "shared/io.h"
#include "shared/macro.h"
#include "shared/mem.h"
#include "shared/timeutil.h"

/* requests read per wakeup before events are sent: a few, so exits are reported promptly (until
 * the master hears of an exit, that connection still counts against the limits) */
#define BATCH 16
/* every child has at most a STARTED and an EXITED event outstanding */
#define EVENTS_CAP (2 * SLOTS_MAX + 2 * BATCH)

/* a full scan of the children waits SCAN_RATIO times as long as the last one took per child it
 * found (at most SCAN_WAIT_MAX_USEC) */
#define SCAN_RATIO 20
#define SCAN_WAIT_MAX_USEC (100 * USEC_PER_MSEC)
/* how long a spawner that is to exit waits for a spare it handed a connection to take it */
#define HANDED_WAIT_MSEC 3000
/* children a SIGCHLD named, kept until reaped: one per siginfo read (SIGCHLD is not queued, so
 * rarely more than one at a time) */
#define NAMED_MAX 64

/* exit statuses the master's log explains */
enum { EXIT_OK = 0, EXIT_SETUP = SPAWN_EXIT_SETUP, EXIT_SANDBOX = SPAWN_EXIT_SANDBOX };

/* Set once at start (or at the first SPAWN_SANDBOX) and only read after: these pages stay shared
 * with every child (copy-on-write: written, a page becomes the writer's own). */
static HashMap *live; /* pid → slot of every child not yet reaped */
static SpawnSandbox sandbox; /* the children read it */
static bool sandbox_set;
static char *title_area;
static size_t title_size;
/* the spare channel: [0] the spawner sends connections (and reads answers), [1] the spare receives */
static int spare_chan[2] = { -1, -1 };

/* Written at every turn of the loop: kept out of the children (MADV_DONTFORK), so writing it after
 * a fork is no copy-on-write fault (one per page per fork, otherwise). */
typedef struct State {
        SpawnRequest req;
        bool reap_pending;      /* a scan is owed: SIGCHLD came, or reap() stopped for want of room */
        uint64_t scan_after;    /* now_usec() before which no scan starts */
        size_t n_named;
        pid_t named[NAMED_MAX]; /* children a SIGCHLD named, not yet looked up */
        pid_t spare;       /* waiting on the spare channel, no connection yet; 0: none */
        pid_t handed;      /* handed a connection, has not said it took it; 0: none */
        unsigned spare_deaths; /* spares in a row that died unused */
        bool spare_holdoff;    /* two did: fork the next connection directly first */
        size_t n_events;
        SpawnEvent events[EVENTS_CAP]; /* unsent, in order */
} State;
static State *st;

static void push_event(uint32_t type, uint32_t slot, pid_t pid, int value) {
        st->events[st->n_events++] = (SpawnEvent) { .type = type, .slot = slot, .pid = pid, .value = value };
}

static bool events_room(size_t n) {
        return st->n_events + n <= EVENTS_CAP;
}

/* Send what is queued, a datagram at a time; stops at EAGAIN. Returns 0 or -errno (master gone). */
static int flush_events(int sock) {
        size_t sent = 0;

        while (sent < st->n_events) {
                size_t n = MIN(st->n_events - sent, (size_t) SPAWN_EVENTS_MAX);
                if (send(sock, st->events + sent, n * sizeof(SpawnEvent), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                break;
                        return negative_errno();
                }
                sent += n;
        }
        memmove(st->events, st->events + sent, (st->n_events - sent) * sizeof(SpawnEvent));
        st->n_events -= sent;
        return 0;
}

/* The handed spare died before it said it took its connection: if the hand-off still waits in
 * the channel, close it here, or the next spare would serve a connection the master, told of this
 * pid's end, no longer counts. No other process reads the channel now. */
static void spare_lost_handoff(void) {
        SpawnConnection stale;
        int fd;

        while (recv_with_fd(spare_chan[1], &stale, sizeof(stale), MSG_DONTWAIT, &fd) > 0)
                safe_close(fd);
        st->handed = 0;
}

/* The spare's answers: its pid, once it holds its connection. One that is not the handed spare's
 * is an old one's (it took its connection, then died before this was read): ignored. */
static void read_spare_answers(void) {
        pid_t pid;

        while (recv(spare_chan[0], &pid, sizeof(pid), MSG_DONTWAIT) == (ssize_t) sizeof(pid))
                if (pid == st->handed)
                        st->handed = 0;
}

/* Hand the connection to the waiting spare. Returns false if there is none or it cannot be sent:
 * then the caller forks for it. */
static bool spare_take(const SpawnConnection *req, int fd) {
        if (st->spare <= 0 || req->kind != SPAWN_KIND_CONNECTION ||
            send_with_fd(spare_chan[0], req, sizeof(*req), fd) < 0)
                return false;
        st->handed = st->spare;
        st->spare = 0;
        st->spare_deaths = 0;
        (void) hashmap_put(live, &st->handed, (int32_t) req->slot);
        push_event(SPAWN_STARTED, req->slot, st->handed, 0);
        return true;
}

/* A spare, if the master wants them and none is waiting or being handed one. */
static void spare_fork(void) {
        if (!sandbox_set || !sandbox.spare || st->spare > 0 || st->handed > 0 || st->spare_holdoff)
                return;
        pid_t pid = _Fork();
        if (pid == 0)
                child_spare_main(spare_chan[1], &sandbox, title_area, title_size);
        if (pid < 0)
                st->spare_holdoff = true; /* again after the next connection's own fork */
        else
                st->spare = pid;
}

static void exited(pid_t pid, int status) {
        if (pid == st->spare) {
                /* never had a connection: the master does not know it. Replaced at once, unless
                 * the one before died unused too (a spare that cannot start) */
                st->spare = 0;
                st->spare_holdoff = ++st->spare_deaths >= 2;
                return;
        }
        if (pid == st->handed)
                spare_lost_handoff();
        hashmap_remove(live, &pid);
        push_event(SPAWN_EXITED, 0, pid, status);
}

/* Empty the SIGCHLD signalfd: each siginfo names a child that exited (or stopped, or went on), and
 * owes a scan for those it could not name. */
static void take_sigchld(int sigfd) {
        struct signalfd_siginfo si[8];
        ssize_t n;

        while ((n = read(sigfd, si, sizeof(si))) > 0) {
                for (size_t i = 0; i < (size_t) n / sizeof(si[0]); i++) {
                        int code = si[i].ssi_code;
                        if ((code == CLD_EXITED || code == CLD_KILLED || code == CLD_DUMPED) &&
                            st->n_named < NAMED_MAX)
                                st->named[st->n_named++] = (pid_t) si[i].ssi_pid;
                }
                st->reap_pending = true;
        }
}

/* Reap what exited: the children named first, then, if one is owed and its time has come, a scan.
 * If it stops for want of room for the events, it goes on after the next send. */
static void reap(void) {
        int status;
        pid_t pid;

        while (st->n_named > 0 && events_room(1)) {
                pid = st->named[--st->n_named];
                /* already reaped by a scan: ECHILD, or 0 if its pid went to a new child meanwhile */
                if (waitpid(pid, &status, WNOHANG) == pid)
                        exited(pid, status);
        }
        uint64_t start = now_usec(), found = 0;
        if (!st->reap_pending || start < st->scan_after)
                return;
        while (events_room(1)) {
                pid = waitpid(-1, &status, WNOHANG);
                if (pid <= 0) {
                        st->reap_pending = false;
                        break;
                }
                exited(pid, status);
                found++;
        }
        uint64_t end = now_usec();
        st->scan_after = end + MIN((end - start) * SCAN_RATIO / MAX(found, 1), SCAN_WAIT_MAX_USEC);
}

/* Before exiting (retired by a reload, or the master gone): a spare handed a connection that has
 * not yet said it took it would find no one to answer and end unserved (child.c). Wait for its
 * answer, or its end, up to HANDED_WAIT_MSEC (a spare someone stopped). */
static void wait_for_handed(int sigfd) {
        uint64_t deadline = now_usec() + HANDED_WAIT_MSEC * USEC_PER_MSEC;

        read_spare_answers();
        while (st->handed > 0) {
                uint64_t now = now_usec();
                if (now >= deadline)
                        return;
                struct pollfd p[2] = {
                        { .fd = spare_chan[0], .events = POLLIN },
                        { .fd = sigfd, .events = POLLIN },
                };
                if (poll(p, 2, (int) ((deadline - now + USEC_PER_MSEC - 1) / USEC_PER_MSEC)) < 0 && errno != EINTR)
                        return;
                read_spare_answers();
                take_sigchld(sigfd);
                reap(); /* a handed spare that died: spare_lost_handoff() */
        }
}

/* poll()'s timeout: until the scan owed may run (-1: none is) */
static int scan_wait(void) {
        if (!st->reap_pending)
                return -1;
        uint64_t now = now_usec();
        return now >= st->scan_after ? 0 : (int) ((st->scan_after - now + USEC_PER_MSEC - 1) / USEC_PER_MSEC);
}

static void spawn(const SpawnConnection *request, int fd) {
        SpawnConnection req = *request; /* the child cannot see st */
        pid_t pid;

        if (req.slot >= SLOTS_MAX) {
                push_event(SPAWN_FAILED, req.slot, 0, -EINVAL);
                return;
        }
        /* the child's clock starts here: reading it there would fault in the vDSO's pages */
        req.params.start_usec = worker_now();
        if (spare_take(&req, fd))
                return;
        st->spare_holdoff = false;
        st->spare_deaths = 0;
        /* _Fork(): no atfork handlers, no malloc or stdio locks taken and released around it (each
         * a write to a libc page, then a copy-on-write fault); this process is single-threaded and
         * the child allocates nothing */
        pid = _Fork();
        if (pid == 0)
                child_main(fd, &req, &sandbox, title_area, title_size);
        if (pid < 0) {
                push_event(SPAWN_FAILED, req.slot, 0, negative_errno());
                return;
        }
        (void) hashmap_put(live, &pid, (int32_t) req.slot);
        push_event(SPAWN_STARTED, req.slot, pid, 0);
}

/* Read and act on up to BATCH requests. Returns 0, 1 when the master closed its end, or -errno
 * when the sandbox could not be entered. */
static int read_requests(int sock, int sigfd) {
        SpawnRequest *req = &st->req;

        for (unsigned i = 0; i < BATCH && events_room(2); i++) {
                int fd;
                ssize_t n = recv_with_fd(sock, req, sizeof(*req), MSG_DONTWAIT, &fd);
                if (n == 0)
                        return 1;
                if (n < 0)
                        return n == -EAGAIN || n == -EINTR ? 0 : 1;

                if (req->type == SPAWN_CONNECTION && n == sizeof(SpawnConnection) && fd >= 0 && sandbox_set) {
                        spawn(&req->connection, fd);
                        /* exits while forking a burst: one read of the signalfd, and a wait4() per
                         * child named (a scan only once owed and its time has come) */
                        take_sigchld(sigfd);
                        reap();
                }
                else if (req->type == SPAWN_SANDBOX && n == sizeof(SpawnSandbox) &&
                         req->sandbox.filter_len <= SPAWN_FILTER_MAX && !sandbox_set) {
                        /* once: the filter cannot be taken back, and the master sends no other */
                        sandbox = req->sandbox;
                        sandbox_set = true;
                        int r = sandbox_enter_spawner(&sandbox);
                        if (r < 0)
                                return r;
                }
                else if (req->type == SPAWN_CONNECTION)
                        push_event(SPAWN_FAILED, n >= (ssize_t) sizeof(SpawnConnection) ? req->connection.slot : 0,
                                   0, -EBADMSG);
                safe_close(fd);
        }
        return 0;
}

int main(int argc, char *argv[]) {
        struct pollfd p[3];
        sigset_t mask;
        int sigfd;

        if (argc < 1 || fcntl(SPAWN_FD_SOCKET, F_GETFD) < 0)
                return EXIT_SETUP; /* not started by echod */
        /* the children's titles go where our arguments are: from argv[0] to the last NUL */
        title_area = argv[0];
        title_size = (size_t) (argv[argc - 1] + strlen(argv[argc - 1]) + 1 - argv[0]);

        live = hashmap_new(sizeof(pid_t), SLOTS_MAX * 2);
        /* made now: the sandbox allows no socketpair() */
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, spare_chan) < 0)
                return EXIT_SETUP;
        st = mem_alloc_unshared(sizeof(State));
        if (!live || !st || child_prepare_once() < 0)
                return EXIT_SETUP;

        /* SIGTERM is blocked (since our exec: the master sets it; again here, for a start by hand; each
         * child unblocks it for its drain); SIGCHLD goes to a signalfd.
         * A terminal's SIGINT/SIGQUIT/SIGHUP reach the master, which drains through us. */
        sigemptyset(&mask);
        for (size_t i = 0; i < ELEMENTSOF(spawner_blocked_signals); i++)
                sigaddset(&mask, spawner_blocked_signals[i]);
        if (sigprocmask(SIG_SETMASK, &mask, NULL) < 0)
                return EXIT_SETUP;
        sigemptyset(&mask);
        sigaddset(&mask, SIGCHLD);
        sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
        if (sigfd < 0)
                return EXIT_SETUP;

        for (;;) {
                p[0] = (struct pollfd) { .fd = SPAWN_FD_SOCKET, .events = (events_room(2) ? POLLIN : 0) |
                                                                         (st->n_events > 0 ? POLLOUT : 0) };
                p[1] = (struct pollfd) { .fd = sigfd, .events = POLLIN };
                p[2] = (struct pollfd) { .fd = spare_chan[0], .events = st->handed > 0 ? POLLIN : 0 };
                /* a scan owed waits for its time, or for room for its events */
                if (poll(p, 3, events_room(1) ? scan_wait() : -1) < 0 && errno != EINTR)
                        return EXIT_SETUP;
                if (p[1].revents)
                        take_sigchld(sigfd);
                /* a slot's EXITED never overtakes its STARTED: both are in order */
                if (p[2].revents & POLLIN)
                        read_spare_answers();
                reap();
                if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
                        int r = read_requests(SPAWN_FD_SOCKET, sigfd);
                        if (r < 0)
                                return EXIT_SANDBOX; /* fail closed: no child without its sandbox */
                        if (r > 0)
                                break; /* the master is gone; the children finish alone */
                }
                if (st->n_events > 0 && flush_events(SPAWN_FD_SOCKET) < 0)
                        break;
                /* after the events are out: the master hears of this batch first */
                if (events_room(2))
                        spare_fork();
        }
        wait_for_handed(sigfd);
        /* what exited meanwhile is reported if the master still reads (a retired spawner: the
         * master shut down only its sending side) */
        take_sigchld(sigfd);
        st->reap_pending = true;
        st->scan_after = 0;
        reap();
        (void) flush_events(SPAWN_FD_SOCKET);
        /* Sandboxed, skip the atexit work: there is nothing to flush, and a sanitizer build's
         * leak check would clone a tracer the filter kills (and then wait for it forever). */
        if (sandbox_set && sandbox.enabled)
                _exit(EXIT_OK);
        return EXIT_OK;
}
