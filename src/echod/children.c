/* Admitted connections: slots, per-source counts and counters, from admission to process end.
 *
 * Memory stays proportional to use: the arrays are reserved for SLOTS_MAX but only touched as
 * slots are used, and freed slots are reused first (LIFO). Its only I/O: each connection's socket
 * is held here, its byte counts read from the kernel (connstat.c), and closed at the end. */
#include "echod/children.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "echod/admit.h"
#include "echod/config.h"
#include "echod/connstat.h"
#include "echod/spawn-proto.h"
#include "echod/worker.h"
#include "shared/hashmap.h"
#include "shared/macro.h"
#include "shared/mem.h"

_Static_assert(SLOTS_MAX == CONFIG_MAX_CONNECTIONS, "one slot per connection max_connections allows");

/* Fixed buckets, so every scrape and every echod compare: a millisecond to an hour, and 64 bytes to
 * a gigabyte, by factors of about 10 (16 for bytes). */
static const uint64_t duration_bounds_usec[] = { 1000, 10000, 100000, 1000000, 10000000, 60000000, 600000000,
                                                 3600000000 };
static const uint64_t bytes_bounds[] = { 64, 1024, 16384, 262144, 4194304, 67108864, 1073741824 };
_Static_assert(ELEMENTSOF(duration_bounds_usec) <= CHILD_HISTOGRAM_BOUNDS_MAX, "histogram bounds");
_Static_assert(ELEMENTSOF(bytes_bounds) <= CHILD_HISTOGRAM_BOUNDS_MAX, "histogram bounds");

struct Children {
        Child *slots;       /* SLOTS_MAX entries; pid 0 = free */
        int *fds;           /* SLOTS_MAX entries: each used slot's socket */
        int32_t *free_stack;
        unsigned n_free;
        unsigned next_fresh; /* slots >= next_fresh have never been used */
        unsigned active, pending;
        HashMap *by_pid;
        SourceTable *sources;
        ChildCounters counters;
};

int children_new(Children **ret) {
        Children *t = calloc(1, sizeof(Children));

        if (!t)
                return -ENOMEM;
        /* the master's own bookkeeping: MADV_DONTFORK, never part of any process it starts */
        t->slots = mem_alloc_unshared(SLOTS_MAX * sizeof(Child));
        t->fds = mem_alloc_unshared(SLOTS_MAX * sizeof(int));
        t->free_stack = mem_alloc_unshared(SLOTS_MAX * sizeof(int32_t));
        t->by_pid = hashmap_new(sizeof(pid_t), SLOTS_MAX * 2);
        if (!t->slots || !t->fds || !t->free_stack || !t->by_pid || source_table_new(&t->sources) < 0) {
                children_free(t);
                return -ENOMEM;
        }
        t->counters.duration_usec = (ChildHistogram) { .bounds = duration_bounds_usec,
                                                       .n_bounds = ELEMENTSOF(duration_bounds_usec) };
        t->counters.bytes = (ChildHistogram) { .bounds = bytes_bounds, .n_bounds = ELEMENTSOF(bytes_bounds) };
        *ret = t;
        return 0;
}

Children *children_free(Children *t) {
        if (!t)
                return NULL;
        if (t->slots && t->fds)
                for (unsigned i = 0; i < t->next_fresh; i++)
                        if (t->slots[i].pid != 0)
                                safe_close(t->fds[i]);
        mem_free_unshared(t->slots, SLOTS_MAX * sizeof(Child));
        mem_free_unshared(t->fds, SLOTS_MAX * sizeof(int));
        mem_free_unshared(t->free_stack, SLOTS_MAX * sizeof(int32_t));
        hashmap_free(t->by_pid);
        source_table_free(t->sources);
        free(t);
        return NULL;
}

unsigned children_active(const Children *t) {
        return t->active;
}

unsigned children_pending(const Children *t) {
        return t->pending;
}

unsigned children_source_count(const Children *t, const IpAddr *source) {
        return source_table_count(t->sources, source);
}

const ChildCounters *children_counters(const Children *t) {
        return &t->counters;
}

void children_source_table(const Children *t, SourceTableStats *ret) {
        source_table_stats(t->sources, ret);
}

const char *child_end_name(int end) {
        return end == CHILD_END_KILLED ? "killed" : worker_exit_reason(end);
}

static void histogram_note(ChildHistogram *h, uint64_t v) {
        unsigned i = 0;

        while (i < h->n_bounds && v > h->bounds[i])
                i++;
        h->counts[i]++;
        h->sum += v;
        h->count++;
}

static bool slot_valid(const Children *t, int slot) {
        return slot >= 0 && (unsigned) slot < t->next_fresh && t->slots[slot].pid != 0;
}

int children_admit(Children *t, const Child *info, int fd, uint64_t now) {
        int slot;

        if (t->n_free > 0)
                slot = t->free_stack[--t->n_free];
        else if (t->next_fresh < SLOTS_MAX)
                slot = (int) t->next_fresh++;
        else
                return -ENOSPC;
        /* cannot fail: the source table holds SLOTS_MAX * 2 keys, and there is one per slot at most */
        (void) source_table_add(t->sources, &info->source);

        t->fds[slot] = fd;
        t->slots[slot] = *info;
        t->slots[slot].pid = CHILD_PID_PENDING;
        t->slots[slot].adopted = false;
        t->slots[slot].start_usec = now;
        t->active++;
        t->pending++;
        t->counters.accepted++;
        t->counters.peak = MAX(t->counters.peak, t->active);
        return slot;
}

int children_started(Children *t, int slot, pid_t pid, unsigned spawner) {
        if (!slot_valid(t, slot) || t->slots[slot].pid != CHILD_PID_PENDING || pid <= 0)
                return -ENOENT;
        if (hashmap_get(t->by_pid, &pid))
                return -EEXIST;
        int r = hashmap_put(t->by_pid, &pid, slot);
        if (r < 0)
                return r;
        t->slots[slot].pid = pid;
        t->slots[slot].spawner = spawner;
        t->pending--;
        return 0;
}

/* Give a slot back, with the bytes the kernel counted on its socket (worker_exit: how its child
 * ended, -1 if there was none), and close the socket. */
static void release(Children *t, int slot, uint64_t now, int worker_exit, ChildRecord *ret) {
        Child *c = &t->slots[slot];
        ConnStat st;

        (void) connstat_read(t->fds[slot], c->header_len, worker_exit, &st);
        t->fds[slot] = safe_close(t->fds[slot]);
        *ret = (ChildRecord) {
                .child = *c,
                .pid = c->pid > 0 ? c->pid : 0,
                .duration_usec = now > c->start_usec ? now - c->start_usec : 0,
                .bytes_in = st.in,
                .bytes_out = st.out,
        };
        source_table_remove(t->sources, &c->source);
        if (c->pid > 0)
                hashmap_remove(t->by_pid, &c->pid);
        else
                t->pending--;
        c->pid = 0;
        t->free_stack[t->n_free++] = slot;
        t->active--;
}

int children_failed(Children *t, int slot, int error, uint64_t now, ChildRecord *ret) {
        if (!slot_valid(t, slot) || t->slots[slot].pid != CHILD_PID_PENDING)
                return -ENOENT;
        release(t, slot, now, -1, ret);
        snprintf(ret->reason, sizeof(ret->reason), "%s", error == -ECHILD ? "spawner-failed" : "fork-failed");
        ret->failure = error != -ECANCELED;
        t->counters.accepted--;
        t->counters.fork_failed++;
        return 0;
}

int children_exited(Children *t, pid_t pid, int status, uint64_t now, ChildRecord *ret) {
        int32_t *v = pid > 0 ? hashmap_get(t->by_pid, &pid) : NULL;

        if (!v)
                return -ENOENT;
        release(t, *v, now, WIFEXITED(status) ? WEXITSTATUS(status) : -1, ret);
        if (WIFEXITED(status)) {
                int code = WEXITSTATUS(status);
                snprintf(ret->reason, sizeof(ret->reason), "%s", worker_exit_reason(code));
                ret->failure = code == WORKER_SETUP_FAILED || code == WORKER_IO_ERROR || code >= _WORKER_EXIT_MAX;
                if (code == WORKER_SETUP_FAILED)
                        t->counters.crashed++;
                t->counters.closed_by[code < _WORKER_EXIT_MAX ? code : CHILD_END_UNKNOWN]++;
        } else {
                int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
                const char *name = sigabbrev_np(sig);
                snprintf(ret->reason, sizeof(ret->reason), "killed-by-SIG%s", name ? name : "?");
                ret->failure = true;
                t->counters.crashed++;
                t->counters.closed_by[CHILD_END_KILLED]++;
        }
        t->counters.closed++;
        t->counters.bytes_in += ret->bytes_in;
        t->counters.bytes_out += ret->bytes_out;
        histogram_note(&t->counters.duration_usec, ret->duration_usec);
        histogram_note(&t->counters.bytes, ret->bytes_in);
        return 0;
}

unsigned children_adopt(Children *t, unsigned spawner) {
        const void *key;
        size_t pos = 0;
        int32_t slot;
        unsigned n = 0;

        while (hashmap_next(t->by_pid, &pos, &key, &slot))
                if (t->slots[slot].spawner == spawner && !t->slots[slot].adopted) {
                        t->slots[slot].adopted = true;
                        n++;
                }
        return n;
}

int children_fd(const Children *t, int slot) {
        return slot_valid(t, slot) ? t->fds[slot] : -ENOENT;
}

void children_regroup(Children *t, unsigned prefix_v4, unsigned prefix_v6) {
        source_table_clear(t->sources);
        for (unsigned i = 0; i < t->next_fresh; i++) {
                Child *c = &t->slots[i];
                if (c->pid == 0)
                        continue;
                c->source = c->peer;
                ipaddr_mask(&c->source, c->peer.family == AF_INET ? prefix_v4 : prefix_v6);
                (void) source_table_add(t->sources, &c->source); /* as in admit: cannot fail */
        }
}

const Child *children_next(const Children *t, size_t *pos, int *ret_slot) {
        for (; *pos < t->next_fresh; (*pos)++)
                if (t->slots[*pos].pid != 0) {
                        if (ret_slot)
                                *ret_slot = (int) *pos;
                        return &t->slots[(*pos)++];
                }
        return NULL;
}

void children_stat(const Children *t, int slot, uint64_t *ret_in, uint64_t *ret_out, uint64_t *ret_idle_usec) {
        ConnStat st = { 0 };

        if (slot_valid(t, slot))
                (void) connstat_read(t->fds[slot], t->slots[slot].header_len, -1, &st);
        *ret_in = st.in;
        *ret_out = st.out;
        *ret_idle_usec = st.idle_usec;
}

bool children_next_source(const Children *t, size_t *pos, IpAddr *ret_source, unsigned *ret_count) {
        const void *key;
        int32_t v;

        if (!source_table_next(t->sources, pos, &key, &v))
                return false;
        memcpy(ret_source, key, sizeof(IpAddr));
        *ret_count = (unsigned) v;
        return true;
}

const Child *children_get_by_pid(const Children *t, pid_t pid) {
        int32_t *v = hashmap_get(t->by_pid, &pid);
        return v ? &t->slots[*v] : NULL;
}

int children_check(const Children *t, const char **ret_what) {
        unsigned used = 0, pending = 0, live = 0;
        _cleanup_(freep) IpAddr *keys = NULL;

#define CHECK(cond, what)                  \
        do {                               \
                if (!(cond)) {             \
                        *ret_what = (what); \
                        return -EUCLEAN;   \
                }                          \
        } while (0)

        keys = malloc((t->active ? t->active : 1) * sizeof(IpAddr));
        if (!keys)
                return 0; /* nothing to check with: not a broken invariant */
        for (unsigned i = 0; i < t->next_fresh; i++) {
                const Child *c = &t->slots[i];
                if (c->pid == 0)
                        continue;
                CHECK(used < t->active, "more slots in use than active");
                keys[used++] = c->source;
                if (c->pid == CHILD_PID_PENDING)
                        pending++;
                else {
                        int32_t *v = hashmap_get(t->by_pid, &c->pid);
                        CHECK(v && *v == (int32_t) i, "a live child is not in the pid index under its slot");
                        live++;
                }
        }
        CHECK(used == t->active, "active != admitted slots in use");
        CHECK(pending == t->pending, "pending count != pending slots");
        CHECK(live + pending == t->active, "active != live children + hand-offs in flight");
        CHECK(hashmap_size(t->by_pid) == live, "the pid index holds something that is not a live child");
        CHECK(used + t->n_free == t->next_fresh, "a slot is both free and used, or neither");
        /* every source's count is the number of admitted connections with that key, and the table
         * holds no other key: so the counts sum to active */
        CHECK(source_table_matches(t->sources, keys, used), "per-source counts differ from the admitted connections");
        /* every ended process is counted once by how it ended, and once in each histogram */
        uint64_t by_end = 0, durations = 0, bytes = 0;
        for (unsigned i = 0; i < _CHILD_END_MAX; i++)
                by_end += t->counters.closed_by[i];
        for (unsigned i = 0; i <= t->counters.duration_usec.n_bounds; i++)
                durations += t->counters.duration_usec.counts[i];
        for (unsigned i = 0; i <= t->counters.bytes.n_bounds; i++)
                bytes += t->counters.bytes.counts[i];
        CHECK(by_end == t->counters.closed, "closed != the sum of closed by reason");
        CHECK(durations == t->counters.closed && t->counters.duration_usec.count == t->counters.closed &&
                      bytes == t->counters.closed && t->counters.bytes.count == t->counters.closed,
              "a histogram's buckets or count differ from closed");
#undef CHECK
        return 0;
}
