/* The slot table: one slot per live child, shared counters in a memfd mapping.
 *
 * Memory stays proportional to use: the shared mapping and the private arrays are reserved for
 * SLOTS_MAX but only touched as slots are used, and freed slots are reused first (LIFO). */
#include "echod/children.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shared/hashmap.h"
#include "shared/macro.h"
#include "shared/mem.h"

struct ChildTable {
        SlotShared *shared; /* SLOTS_MAX entries, MAP_SHARED */
        int memfd;          /* ...of this memfd, which echod-spawner maps too */
        Child *children;    /* SLOTS_MAX entries, private; pid 0 = free, CHILD_PID_PENDING = handed over */
        int32_t *free_stack;
        unsigned n_free;
        unsigned next_fresh; /* slots >= next_fresh have never been used */
        unsigned active;
        HashMap *by_pid;
};

int child_table_new(ChildTable **ret) {
        ChildTable *t = calloc(1, sizeof(ChildTable));

        if (!t)
                return -ENOMEM;
        /* sparse: pages exist only where slots were used */
        t->memfd = memfd_create("echod-slots", MFD_CLOEXEC);
        if (t->memfd < 0 || ftruncate(t->memfd, sizeof(SlotShared) * SLOTS_MAX) < 0) {
                int r = negative_errno();
                child_table_free(t);
                return r;
        }
        t->shared = mmap(NULL, sizeof(SlotShared) * SLOTS_MAX, PROT_READ | PROT_WRITE, MAP_SHARED, t->memfd, 0);
        if (t->shared == MAP_FAILED) {
                t->shared = NULL;
                child_table_free(t);
                return -ENOMEM;
        }
        /* the master's own bookkeeping: not inherited, so fork() neither copies nor COW-faults it */
        t->children = mem_alloc_unshared(SLOTS_MAX * sizeof(Child));
        t->free_stack = mem_alloc_unshared(SLOTS_MAX * sizeof(int32_t));
        t->by_pid = hashmap_new(sizeof(pid_t), SLOTS_MAX * 2);
        if (!t->children || !t->free_stack || !t->by_pid) {
                child_table_free(t);
                return -ENOMEM;
        }
        *ret = t;
        return 0;
}

ChildTable *child_table_free(ChildTable *t) {
        if (!t)
                return NULL;
        if (t->shared)
                munmap(t->shared, sizeof(SlotShared) * SLOTS_MAX);
        safe_close(t->memfd);
        mem_free_unshared(t->children, SLOTS_MAX * sizeof(Child));
        mem_free_unshared(t->free_stack, SLOTS_MAX * sizeof(int32_t));
        hashmap_free(t->by_pid);
        free(t);
        return NULL;
}

int child_table_reserve(ChildTable *t) {
        int slot;

        if (t->n_free > 0)
                slot = t->free_stack[--t->n_free];
        else if (t->next_fresh < SLOTS_MAX)
                slot = (int) t->next_fresh++;
        else
                return -ENOSPC;

        SlotShared *s = &t->shared[slot];
        atomic_store_explicit(&s->bytes_in, 0, memory_order_relaxed);
        atomic_store_explicit(&s->bytes_out, 0, memory_order_relaxed);
        atomic_store_explicit(&s->last_active_usec, 0, memory_order_relaxed);
        atomic_store_explicit(&s->pid, 0, memory_order_relaxed);
        atomic_store_explicit(&s->finished, 0, memory_order_relaxed);
        return slot;
}

void child_table_abort(ChildTable *t, int slot) {
        t->free_stack[t->n_free++] = slot;
}

int child_table_commit(ChildTable *t, int slot, const Child *child) {
        if (child->pid > 0) {
                int r = hashmap_put(t->by_pid, &child->pid, slot);
                if (r < 0)
                        return r;
        }
        t->children[slot] = *child;
        if (child->pid <= 0)
                t->children[slot].pid = CHILD_PID_PENDING;
        t->active++;
        return 0;
}

int child_table_started(ChildTable *t, int slot, pid_t pid) {
        if (slot < 0 || slot >= SLOTS_MAX || t->children[slot].pid != CHILD_PID_PENDING || pid <= 0)
                return -ENOENT;
        int r = hashmap_put(t->by_pid, &pid, slot);
        if (r < 0)
                return r;
        t->children[slot].pid = pid;
        return 0;
}

int child_table_release_slot(ChildTable *t, int slot, Child *ret_child, uint64_t *ret_in, uint64_t *ret_out) {
        if (slot < 0 || slot >= SLOTS_MAX || t->children[slot].pid == 0)
                return -ENOENT;
        if (t->children[slot].pid > 0)
                hashmap_remove(t->by_pid, &t->children[slot].pid);
        *ret_child = t->children[slot];
        *ret_in = atomic_load_explicit(&t->shared[slot].bytes_in, memory_order_relaxed);
        *ret_out = atomic_load_explicit(&t->shared[slot].bytes_out, memory_order_relaxed);
        t->children[slot].pid = 0;
        t->free_stack[t->n_free++] = slot;
        t->active--;
        return slot;
}

int child_table_release(ChildTable *t, pid_t pid, Child *ret_child, uint64_t *ret_in, uint64_t *ret_out) {
        int32_t *v = hashmap_get(t->by_pid, &pid);

        return v ? child_table_release_slot(t, *v, ret_child, ret_in, ret_out) : -ENOENT;
}

int child_table_next_pending(const ChildTable *t, int *pos) {
        for (; *pos >= 0 && (unsigned) *pos < t->next_fresh; (*pos)++)
                if (t->children[*pos].pid == CHILD_PID_PENDING)
                        return (*pos)++;
        return -ENOENT;
}

unsigned child_table_finishing(const ChildTable *t, const IpAddr *source, unsigned *ret_same_source) {
        unsigned n = 0, same = 0;

        for (unsigned i = 0; i < t->next_fresh; i++)
                if (t->children[i].pid != 0 && atomic_load_explicit(&t->shared[i].finished, memory_order_acquire)) {
                        n++;
                        same += ipaddr_equal(&t->children[i].source, source);
                }
        *ret_same_source = same;
        return n;
}

unsigned child_table_adopt_all(ChildTable *t) {
        const void *key;
        size_t pos = 0;
        int32_t slot;
        unsigned n = 0;

        while (hashmap_next(t->by_pid, &pos, &key, &slot)) {
                t->children[slot].adopted = true;
                n++;
        }
        return n;
}

int child_table_memfd(const ChildTable *t) {
        return t->memfd;
}

int child_table_slot_of(ChildTable *t, pid_t pid) {
        int32_t *v = hashmap_get(t->by_pid, &pid);
        return v ? *v : -ENOENT;
}

SlotShared *child_table_shared(ChildTable *t, int slot) {
        return &t->shared[slot];
}

const Child *child_table_get(const ChildTable *t, int slot) {
        return &t->children[slot];
}

unsigned child_table_active(const ChildTable *t) {
        return t->active;
}

const Child *child_table_next(const ChildTable *t, size_t *pos) {
        const void *key;
        int32_t slot;

        if (!hashmap_next(t->by_pid, pos, &key, &slot))
                return NULL;
        return &t->children[slot];
}
