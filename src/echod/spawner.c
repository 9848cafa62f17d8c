/* The master's side of echod-spawner: start it, hand it connections, read what it reports,
 * and start it again if it dies.
 *
 * The master is a subreaper: if the spawner dies, its children (live connections) are reparented
 * to the master, which reaps and records them like any other; a new spawner takes new
 * connections. A hand-off that cannot be sent at once waits in order in m->handoff. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "build-config.h"
#include "echod/log.h"
#include "echod/manager-internal.h"
#include "echod/manager.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

/* argument area the children's titles are written over: "echod: " and the longest endpoint */
#define TITLE_PAD 56
_Static_assert(sizeof("echod: spawner") + TITLE_PAD > SPAWN_TITLE_MAX, "a child's title must fit the spawner's arguments");
/* a spawner that dies within this of its start is started again only after it */
#define RESTART_HOLDOFF_USEC USEC_PER_SEC
/* at exit: how long the spawner gets to go after its socket is closed */
#define STOP_WAIT_MSEC 2000

static char spawner_path[4096];

void spawner_locate(const char *argv0) {
        const char *slash = argv0 ? strrchr(argv0, '/') : NULL;

        /* next to the echod binary (a build tree), else where the package installs it */
        if (slash && (size_t) (slash - argv0) + sizeof("/echod-spawner") <= sizeof(spawner_path)) {
                snprintf(spawner_path, sizeof(spawner_path), "%.*s/echod-spawner", (int) (slash - argv0), argv0);
                if (access(spawner_path, X_OK) == 0)
                        return;
        }
        snprintf(spawner_path, sizeof(spawner_path), "%s", ECHOD_SPAWNER_PATH);
}

static int send_sandbox(Manager *m) {
        static SpawnSandbox req;

        sandbox_request(m->sandbox, &req);
        return send(m->spawner_fd, &req, sizeof(req), MSG_NOSIGNAL) < 0 ? negative_errno() : 0;
}

/* Send one hand-off. Returns 0, -EAGAIN (try later) or another -errno. */
static int send_connection(Manager *m, Conn *c) {
        const Config *cfg = m->config;
        SpawnConnection req = {
                .type = SPAWN_CONNECTION,
                .slot = (uint32_t) c->slot,
                .params = {
                        .idle_timeout = cfg->idle_timeout,
                        .stall_timeout = cfg->stall_timeout,
                        .max_session = cfg->max_session,
                        .max_bytes = cfg->max_bytes,
                },
        };
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int))];
        } control = { 0 };
        struct iovec iov = { .iov_base = &req, .iov_len = sizeof(req) };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                             .msg_controllen = sizeof(control) };
        char peer[IPADDR_STR_MAX];

        if (m->spawner_fd < 0 || m->spawner_retiring)
                return -EAGAIN;
        snprintf(req.title, sizeof(req.title), "echod: %s", ipaddr_format_endpoint(&c->peer, peer));
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &c->fd, sizeof(int));
        return sendmsg(m->spawner_fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 ? negative_errno() : 0;
}

static void update_io(Manager *m) {
        if (m->spawner_io)
                (void) sd_event_source_set_io_events(m->spawner_io,
                                                     EPOLLIN | (m->handoff.head && !m->spawner_retiring ? EPOLLOUT : 0));
}

/* Send queued hand-offs in order until the socket is full. */
static void flush_handoff(Manager *m) {
        while (m->handoff.head) {
                Conn *c = m->handoff.head;
                if (send_connection(m, c) < 0)
                        break; /* EAGAIN: wait for EPOLLOUT; a dead spawner: for its restart */
                list_remove(&m->handoff, c);
                conn_free(c);
        }
        update_io(m);
}

void spawner_handoff(Manager *m, Conn *c) {
        list_append(&m->handoff, c);
        flush_handoff(m);
}

void spawner_drop_handoff(Manager *m) {
        while (m->handoff.head) {
                Conn *c = m->handoff.head;
                list_remove(&m->handoff, c);
                accept_spawn_failed(m, c->slot, -ECANCELED);
                conn_free(c);
        }
        update_io(m);
}

static void handle_event(Manager *m, const SpawnEvent *e, unsigned *exits) {
        switch (e->type) {
        case SPAWN_STARTED:
                (void) child_table_started(m->children, (int) e->slot, e->pid);
                break;
        case SPAWN_FAILED:
                accept_spawn_failed(m, (int) e->slot, e->value);
                (*exits)++;
                break;
        case SPAWN_EXITED:
                record_exit(m, e->pid, e->value);
                (*exits)++;
                break;
        }
}

unsigned spawner_read_events(Manager *m) {
        static SpawnEvent ev[SPAWN_EVENTS_MAX];
        unsigned exits = 0;
        ssize_t n;

        while (m->spawner_fd >= 0 && (n = recv(m->spawner_fd, ev, sizeof(ev), MSG_DONTWAIT)) > 0)
                for (size_t i = 0; i < (size_t) n / sizeof(SpawnEvent); i++)
                        handle_event(m, &ev[i], &exits);
        return exits;
}

static int on_spawner_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;

        if (revents & EPOLLOUT)
                flush_handoff(m);
        if (spawner_read_events(m) > 0)
                children_gone(m);
        return 0;
}

int spawner_start(Manager *m) {
        _cleanup_(closep) int mine = -1, theirs = -1;
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        char *argv[2 + TITLE_PAD] = { (char *) "echod: spawner" };
        char *envp[] = { NULL };
        sigset_t none;
        int pair[2], r;
        pid_t pid;

        for (int i = 1; i <= TITLE_PAD; i++)
                argv[i] = (char *) "";
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
                return negative_errno();
        mine = pair[0];
        /* well above the numbers it is moved to, so no dup2 is a no-op that keeps O_CLOEXEC */
        theirs = fcntl(pair[1], F_DUPFD_CLOEXEC, 10);
        safe_close(pair[1]);
        if (theirs < 0)
                return negative_errno();
        int slots = fcntl(child_table_memfd(m->children), F_DUPFD_CLOEXEC, 10);
        if (slots < 0)
                return negative_errno();

        sigemptyset(&none);
        posix_spawn_file_actions_init(&fa);
        posix_spawnattr_init(&attr);
        posix_spawn_file_actions_adddup2(&fa, theirs, SPAWN_FD_SOCKET);
        posix_spawn_file_actions_adddup2(&fa, slots, SPAWN_FD_SLOTS);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
        r = -posix_spawn(&pid, spawner_path, &fa, &attr, argv, envp);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
        safe_close(slots);
        if (r < 0)
                return r;

        m->spawner_pid = pid;
        m->spawner_fd = TAKE_FD(mine);
        m->spawner_started_usec = now_usec();
        r = send_sandbox(m);
        if (r >= 0)
                r = sd_event_add_io(m->event, &m->spawner_io, m->spawner_fd, EPOLLIN, on_spawner_io, m);
        /* like SIGCHLD before: exits are seen before the next admission */
        if (r >= 0)
                r = sd_event_source_set_priority(m->spawner_io, SD_EVENT_PRIORITY_IMPORTANT);
        if (r < 0)
                return r; /* the spawner exits when it sees the socket closed */
        flush_handoff(m);
        return 0;
}

void spawner_signal(Manager *m, int sig) {
        SpawnSignal req = { .type = SPAWN_SIGNAL, .signal = sig };
        size_t pos = 0;
        const Child *c;

        /* blocking: it must not be lost, and the spawner reads continuously */
        if (m->spawner_fd >= 0)
                (void) send(m->spawner_fd, &req, sizeof(req), MSG_NOSIGNAL);
        /* children of a spawner that died are ours now: signal them directly (we reap them, so the
         * pid cannot have been reused) */
        while ((c = child_table_next(m->children, &pos)))
                if (c->adopted)
                        (void) kill(c->pid, sig);
}

static void close_channel(Manager *m) {
        m->spawner_io = sd_event_source_disable_unref(m->spawner_io);
        m->spawner_fd = safe_close(m->spawner_fd);
}

void spawner_stop(Manager *m) {
        close_channel(m);
        m->restart_timer = sd_event_source_disable_unref(m->restart_timer);
        if (m->spawner_pid > 0) {
                /* it exits at the end of its socket; one that does not (stopped, stuck) is killed */
                _cleanup_(closep) int pidfd = pidfd_open(m->spawner_pid, 0);
                struct pollfd p = { .fd = pidfd, .events = POLLIN };
                if (pidfd < 0 || poll(&p, 1, STOP_WAIT_MSEC) <= 0)
                        (void) kill(m->spawner_pid, SIGKILL);
                (void) waitpid(m->spawner_pid, NULL, 0);
        }
        m->spawner_pid = 0;
}

static int on_retire_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        log_warning("echod-spawner (pid %d) did not exit within %u ms of being retired, killing it",
                    (int) m->spawner_pid, STOP_WAIT_MSEC);
        (void) kill(m->spawner_pid, SIGKILL);
        return 0;
}

void spawner_retire(Manager *m) {
        if (m->spawner_pid <= 0 || m->spawner_fd < 0 || m->spawner_retiring)
                return; /* the next spawner to start enters the new sandbox anyway */
        /* it reads what was sent before, reports, and exits at the end of the stream */
        if (shutdown(m->spawner_fd, SHUT_WR) < 0) {
                (void) kill(m->spawner_pid, SIGKILL);
                return;
        }
        m->spawner_retiring = true;
        update_io(m);
        log_info("sandbox is now %s: echod-spawner (pid %d) hands over to a new one; running connections "
                 "keep the sandbox they started in", m->config->sandbox ? "on" : "off", (int) m->spawner_pid);
        m->restart_timer = sd_event_source_disable_unref(m->restart_timer);
        (void) sd_event_add_time_relative(m->event, &m->restart_timer, CLOCK_MONOTONIC,
                                          (uint64_t) STOP_WAIT_MSEC * USEC_PER_MSEC, 0, on_retire_timeout, m);
}

/* The spawner's children are the master's now. Those it reaped but could not report (it died
 * between its wait4() and its send) are not: waitpid() says ECHILD, and their end is recorded
 * as unknown. Returns how many went away. */
static unsigned adopt_children(Manager *m, unsigned *ret_adopted) {
        unsigned gone = 0;
        bool again = true;

        *ret_adopted = child_table_adopt_all(m->children);
        while (again) {
                size_t pos = 0;
                const Child *c;
                again = false;
                while ((c = child_table_next(m->children, &pos))) {
                        int status;
                        pid_t pid = c->pid, r = waitpid(pid, &status, WNOHANG);
                        if (r == 0 || (r < 0 && errno != ECHILD))
                                continue;
                        record_exit(m, pid, r == pid ? status : W_EXITCODE(255, 0));
                        (*ret_adopted)--;
                        gone++;
                        again = true; /* the table changed under the iterator */
                        break;
                }
        }
        return gone;
}

static int on_restart(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        int r = spawner_start(m);

        if (r < 0) {
                close_channel(m);
                if (m->spawner_pid > 0)
                        return 0; /* it exits on the closed socket; its SIGCHLD retries */
                log_error_errno(r, "Failed to start %s, retrying in 1 s", spawner_path);
                m->restart_timer = sd_event_source_disable_unref(m->restart_timer);
                return sd_event_add_time_relative(m->event, &m->restart_timer, CLOCK_MONOTONIC,
                                                  RESTART_HOLDOFF_USEC, 0, on_restart, m);
        }
        log_notice("started a new echod-spawner (pid %d, sandbox %s)", (int) m->spawner_pid,
                   m->config->sandbox ? "on" : "off");
        return 0;
}

bool spawner_reaped(Manager *m, pid_t pid, int status) {
        unsigned adopted, lost = 0;
        int slot, pos = 0;
        bool retired = m->spawner_retiring && WIFEXITED(status) && WEXITSTATUS(status) == 0;

        if (pid != m->spawner_pid)
                return false;
        m->spawner_pid = 0;
        m->spawner_retiring = false;
        /* what it sent before dying is still true */
        if (spawner_read_events(m) > 0)
                children_gone(m);
        close_channel(m);

        /* its children are ours now (subreaper); those whose STARTED never came: the pid it wrote
         * into their slot after fork(), or no child at all */
        while ((slot = child_table_next_pending(m->children, &pos)) >= 0) {
                pid_t child = (pid_t) atomic_load_explicit(&child_table_shared(m->children, slot)->pid,
                                                           memory_order_relaxed);
                if (child <= 0 || child_table_started(m->children, slot, child) < 0) {
                        accept_spawn_failed(m, slot, -ECHILD);
                        lost++;
                }
        }
        if (adopt_children(m, &adopted) > 0)
                children_gone(m);
        if (retired)
                log_info("echod-spawner (pid %d) retired; its %u connections continue", (int) pid, adopted);
        else if (WIFSIGNALED(status)) {
                const char *sig = sigabbrev_np(WTERMSIG(status));
                log_error("echod-spawner (pid %d) was killed by SIG%s; its %u connections continue, %u not started "
                          "were closed", (int) pid, sig ? sig : "?", adopted, lost);
        } else
                log_error("echod-spawner (pid %d) exited with status %d%s; its %u connections continue, %u not "
                          "started were closed", (int) pid, WEXITSTATUS(status),
                          WEXITSTATUS(status) == SPAWN_EXIT_SANDBOX ? " (it could not enter the sandbox)" : "",
                          adopted, lost);
        if (m->stopping) {
                spawner_drop_handoff(m);
                return true;
        }
        uint64_t since = now_usec() - m->spawner_started_usec;
        m->restart_timer = sd_event_source_disable_unref(m->restart_timer);
        (void) sd_event_add_time_relative(m->event, &m->restart_timer, CLOCK_MONOTONIC,
                                          !retired && since < RESTART_HOLDOFF_USEC ? RESTART_HOLDOFF_USEC : 0, 0,
                                          on_restart, m);
        return true;
}
