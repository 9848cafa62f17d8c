/* The master's side of each connection's life, from its admission to its record: accept's admit
 * callback (a slot in children, then the hand-off to the spawner) and the spawner's callbacks
 * (started, failed, exited; a dead spawner's gone, whose children are adopted, and lost, whose
 * orphaned connection is found by the process holding its socket), each turned into verbs on
 * children; a connection's record is logged here when it ends. Part of the manager module
 * (manager-internal.h): manager.c wires these and calls manager_child_exited() from its reaping;
 * nothing here calls back into manager.c. */
#include "echod/manager-internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include "echod/accept.h"
#include "echod/children.h"
#include "echod/log.h"
#include "echod/orphans.h"
#include "echod/spawn-proto.h"
#include "echod/spawner.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

/* --- connection records ---------------------------------------------------------------------- */

static void log_record(Manager *m, const ChildRecord *rec) {
        if (!m->config->log_connections && !rec->failure)
                return;
        log_connection(&(ConnectionRecord) {
                .peer = rec->child.peer,
                .via = rec->child.via,
                .proxied = rec->child.proxied,
                .local = rec->child.local,
                .pid = rec->pid,
                .duration_usec = rec->duration_usec,
                .bytes_in = rec->bytes_in,
                .bytes_out = rec->bytes_out,
                .reason = rec->reason,
                .failure = rec->failure,
        });
}

void manager_child_exited(Manager *m, pid_t pid, int status) {
        ChildRecord rec;

        /* one not known is a dead spawner's child it never reported: its hand-off ends in
         * lost(), which finds no process holding the connection any more */
        if (children_exited(m->children, pid, status, now_usec(), &rec) < 0)
                return;
        accept_slots_freed(m->accept);
        log_record(m, &rec);
}

static void child_failed(Manager *m, int slot, int error) {
        ChildRecord rec;

        if (children_failed(m->children, slot, error, now_usec(), &rec) < 0)
                return;
        accept_slots_freed(m->accept);
        if (error != -ECANCELED)
                accept_note_refusal(m->accept, error == -ECHILD ? REFUSE_SPAWNER : REFUSE_FORK, &rec.child, NULL,
                                    error);
}

/* --- accept's callback --------------------------------------------------------------------------- */

static int on_admit(void *userdata, int fd, const Child *info) {
        Manager *m = userdata;
        const Config *c = m->config;
        WorkerParams params = {
                .idle_timeout = c->idle_timeout,
                .stall_timeout = c->stall_timeout,
                .max_session = c->max_session,
                .max_bytes = c->max_bytes,
        };
        char title[SPAWN_TITLE_MAX], peer[IPADDR_STR_MAX];
        int slot = children_admit(m->children, info, fd, now_usec());

        if (slot < 0)
                return slot;
        snprintf(title, sizeof(title), "echod: %s", ipaddr_format_endpoint(&info->peer, peer));
        spawner_handoff(m->spawner, fd, slot, &params, title);
        return 0;
}

/* --- the spawner's callbacks ------------------------------------------------------------------- */

static void on_started(void *userdata, int slot, pid_t pid, unsigned spawner) {
        Manager *m = userdata;

        if (children_started(m->children, slot, pid, spawner) < 0) {
                /* a pid that is already someone's: the spawner is not what we started */
                child_failed(m, slot, -EBADMSG);
                return;
        }
        /* admitted during a stop (from the backlog, or once its PROXY header came): it drains
         * like the rest (again to every child of the group: a repeated SIGTERM is harmless) */
        if (m->stopping)
                spawner_signal(m->spawner, m->stop_signal);
}

static void on_failed(void *userdata, int slot, int error) {
        child_failed(userdata, slot, error);
}

static void on_exited(void *userdata, pid_t pid, int status) {
        manager_child_exited(userdata, pid, status);
}

/* A process of ours that the dead spawner forked: whether it lives (0), exited (1, reaped now), or
 * is not ours (-ECHILD: the spawner reaped it and never said). */
static int resolve(pid_t pid, int *ret_status) {
        pid_t r = waitpid(pid, ret_status, WNOHANG);
        return r == pid ? 1 : r == 0 ? 0 : -ECHILD;
}

static bool known_child(void *userdata, pid_t pid) {
        Manager *m = userdata;
        return children_get_by_pid(m->children, pid) != NULL;
}

/* A hand-off its spawner took and died with: its process, if the spawner forked one, is ours now
 * and holds the connection's socket. */
static void on_lost(void *userdata, int slot, unsigned spawner) {
        Manager *m = userdata;
        int fd = children_fd(m->children, slot);
        pid_t pid = fd >= 0 ? orphans_find_holder(fd, known_child, m) : -ENOENT;

        if (pid <= 0 || children_started(m->children, slot, pid, spawner) < 0) {
                child_failed(m, slot, -ECHILD);
                return;
        }
        (void) children_adopt(m->children, spawner);
        if (m->stopping)
                (void) kill(pid, m->stop_signal);
}

static void on_gone(void *userdata, unsigned spawner, pid_t pid, int status, bool retired) {
        Manager *m = userdata;
        unsigned adopted = children_adopt(m->children, spawner);
        size_t pos = 0;
        const Child *c;

        /* its children are ours now; one it reaped but never reported is gone without a word */
        while ((c = children_next(m->children, &pos, NULL))) {
                int st;
                if (c->spawner != spawner || c->pid <= 0)
                        continue;
                pid_t p = c->pid;
                int r = resolve(p, &st);
                if (r != 0) {
                        manager_child_exited(m, p, r > 0 ? st : W_EXITCODE(255, 0));
                        adopted--;
                } else if (m->stopping)
                        (void) kill(p, m->stop_signal);
        }
        if (retired)
                log_info("echod-spawner (pid %d) retired; its %u connections continue", (int) pid, adopted);
        else if (WIFSIGNALED(status)) {
                const char *sig = sigabbrev_np(WTERMSIG(status));
                log_error("echod-spawner (pid %d) was killed by SIG%s; its %u connections continue", (int) pid,
                          sig ? sig : "?", adopted);
        } else
                log_error("echod-spawner (pid %d) exited with status %d%s; its %u connections continue", (int) pid,
                          WEXITSTATUS(status),
                          WEXITSTATUS(status) == SPAWN_EXIT_SANDBOX ? " (it could not enter the sandbox)" : "",
                          adopted);
}

static void on_stuck(void *userdata, pid_t pid, uint64_t stalled_usec, unsigned waiting) {
        if (waiting == 0)
                log_error("echod-spawner (pid %d) has been stopped for %llu s and reaps nothing: killing it",
                          (int) pid, (unsigned long long) (stalled_usec / USEC_PER_SEC));
        else
                log_error("echod-spawner (pid %d) took no hand-off for %llu s with %u waiting: killing it", (int) pid,
                          (unsigned long long) (stalled_usec / USEC_PER_SEC), waiting);
}

static void on_restarted(void *userdata, pid_t pid, int error) {
        Manager *m = userdata;

        if (error < 0)
                log_error_errno(error, "Failed to start %s, retrying in 1 s", spawner_path());
        else
                log_notice("started a new echod-spawner (pid %d, sandbox %s)", (int) pid,
                           m->config->sandbox ? "on" : "off");
}

const AcceptCallbacks manager_accept_callbacks = { .admit = on_admit };

const SpawnerCallbacks manager_spawner_callbacks = {
        .started = on_started,
        .failed = on_failed,
        .exited = on_exited,
        .gone = on_gone,
        .lost = on_lost,
        .restarted = on_restarted,
        .stuck = on_stuck,
};
