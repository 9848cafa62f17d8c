/* Fixed-capacity open-addressing hash map: fixed-size byte keys to int32 values, seeded hash. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct HashMap HashMap;

/* capacity is rounded up to a power of two; at most 3/4 of it may be filled. The table is
 * mem_alloc_unshared(): pages never used cost nothing, and fork() children do not inherit it
 * (every map is the master's bookkeeping; a fork does not copy it, nor COW-fault it after).
 * Returns NULL on ENOMEM. */
HashMap *hashmap_new(size_t key_size, size_t capacity);
HashMap *hashmap_free(HashMap *m);

int32_t *hashmap_get(HashMap *m, const void *key);
/* Insert or replace. Returns 0 or -ENOSPC when full. */
int hashmap_put(HashMap *m, const void *key, int32_t value);
bool hashmap_remove(HashMap *m, const void *key);
size_t hashmap_size(const HashMap *m);
void hashmap_clear(HashMap *m);

/* Iterate: start with *pos = 0; returns false at the end. */
bool hashmap_next(const HashMap *m, size_t *pos, const void **ret_key, int32_t *ret_value);
