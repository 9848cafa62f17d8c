/* The slot table: one slot per live child, shared counters in a MAP_SHARED mapping.
 *
 * Memory stays proportional to use: the shared mapping and the private arrays are reserved for
 * SLOTS_MAX but only touched as slots are used, and freed slots are reused first (LIFO). */
#include "echod/children.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "shared/hashmap.h"
#include "shared/macro.h"
#include "shared/mem.h"

struct ChildTable {
        SlotShared *shared; /* SLOTS_MAX entries, MAP_SHARED */
        Child *children;    /* SLOTS_MAX entries, private; pid 0 = free */
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
        t->shared = mmap(NULL, sizeof(SlotShared) * SLOTS_MAX, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
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
        return slot;
}

void child_table_abort(ChildTable *t, int slot) {
        t->free_stack[t->n_free++] = slot;
}

int child_table_commit(ChildTable *t, int slot, const Child *child) {
        int r = hashmap_put(t->by_pid, &child->pid, slot);
        if (r < 0)
                return r;
        t->children[slot] = *child;
        t->active++;
        return 0;
}

int child_table_release(ChildTable *t, pid_t pid, Child *ret_child, uint64_t *ret_in, uint64_t *ret_out) {
        int32_t *v = hashmap_get(t->by_pid, &pid);
        int slot;

        if (!v)
                return -ENOENT;
        slot = *v;
        hashmap_remove(t->by_pid, &pid);
        *ret_child = t->children[slot];
        *ret_in = atomic_load_explicit(&t->shared[slot].bytes_in, memory_order_relaxed);
        *ret_out = atomic_load_explicit(&t->shared[slot].bytes_out, memory_order_relaxed);
        t->children[slot].pid = 0;
        t->free_stack[t->n_free++] = slot;
        t->active--;
        return slot;
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
