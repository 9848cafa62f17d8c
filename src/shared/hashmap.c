/* Fixed-capacity open-addressing hash map: fixed-size byte keys to int32 values, seeded hash.
 * Linear probing with backward-shift deletion (no tombstones, so probe chains never rot). The
 * seed is random per map, so peers cannot pick addresses that collide on purpose. */
#include "shared/hashmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shared/mem.h"

struct HashMap {
        size_t key_size;
        size_t mask; /* capacity - 1 */
        size_t size;
        uint64_t seed;
        uint8_t *used;
        uint8_t *keys;
        int32_t *values;
};

HashMap *hashmap_new(size_t key_size, size_t capacity) {
        /* the header too: a child forked from the owner never copy-on-write faults it either */
        HashMap *m = mem_alloc_unshared(sizeof(HashMap));
        size_t cap = 16;

        if (!m)
                return NULL;
        while (cap < capacity)
                cap <<= 1;
        m->key_size = key_size;
        m->mask = cap - 1;
        arc4random_buf(&m->seed, sizeof(m->seed));
        m->used = mem_alloc_unshared(cap);
        m->keys = mem_alloc_unshared(cap * key_size);
        m->values = mem_alloc_unshared(cap * sizeof(int32_t));
        if (!m->used || !m->keys || !m->values)
                return hashmap_free(m);
        return m;
}

HashMap *hashmap_free(HashMap *m) {
        if (m) {
                size_t cap = m->mask + 1;
                mem_free_unshared(m->used, cap);
                mem_free_unshared(m->keys, cap * m->key_size);
                mem_free_unshared(m->values, cap * sizeof(int32_t));
                mem_free_unshared(m, sizeof(HashMap));
        }
        return NULL;
}

static uint64_t mix(uint64_t h) {
        h ^= h >> 33;
        h *= UINT64_C(0xff51afd7ed558ccd);
        h ^= h >> 33;
        h *= UINT64_C(0xc4ceb9fe1a85ec53);
        h ^= h >> 33;
        return h;
}

static size_t hash_key(const HashMap *m, const void *key) {
        const uint8_t *p = key;
        uint64_t h = m->seed ^ m->key_size;

        for (size_t i = 0; i < m->key_size; i += 8) {
                uint64_t w = 0;
                memcpy(&w, p + i, m->key_size - i < 8 ? m->key_size - i : 8);
                h = mix(h ^ w) + UINT64_C(0x9e3779b97f4a7c15);
        }
        return (size_t) mix(h) & m->mask;
}

static uint8_t *key_at(const HashMap *m, size_t i) {
        return m->keys + i * m->key_size;
}

static bool find(const HashMap *m, const void *key, size_t *ret) {
        for (size_t i = hash_key(m, key);; i = (i + 1) & m->mask) {
                if (!m->used[i]) {
                        *ret = i;
                        return false;
                }
                if (memcmp(key_at(m, i), key, m->key_size) == 0) {
                        *ret = i;
                        return true;
                }
        }
}

int32_t *hashmap_get(HashMap *m, const void *key) {
        size_t i;

        return find(m, key, &i) ? &m->values[i] : NULL;
}

int hashmap_put(HashMap *m, const void *key, int32_t value) {
        size_t i;

        if (!find(m, key, &i)) {
                if (m->size + 1 > (m->mask + 1) / 4 * 3)
                        return -ENOSPC;
                m->used[i] = 1;
                memcpy(key_at(m, i), key, m->key_size);
                m->size++;
        }
        m->values[i] = value;
        return 0;
}

bool hashmap_remove(HashMap *m, const void *key) {
        size_t i, j;

        if (!find(m, key, &i))
                return false;
        /* backward-shift: move later members of the chain into the hole when allowed */
        for (j = (i + 1) & m->mask; m->used[j]; j = (j + 1) & m->mask) {
                size_t home = hash_key(m, key_at(m, j));
                /* can j's entry move to i? only if its home is not cyclically in (i, j] */
                bool in_between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
                if (in_between)
                        continue;
                memcpy(key_at(m, i), key_at(m, j), m->key_size);
                m->values[i] = m->values[j];
                i = j;
        }
        m->used[i] = 0;
        m->size--;
        return true;
}

size_t hashmap_size(const HashMap *m) {
        return m->size;
}

void hashmap_clear(HashMap *m) {
        size_t pos = 0;
        const void *k;
        int32_t v;

        if (m->size == 0)
                return;
        while (hashmap_next(m, &pos, &k, &v))
                m->used[pos - 1] = 0;
        m->size = 0;
}

bool hashmap_next(const HashMap *m, size_t *pos, const void **ret_key, int32_t *ret_value) {
        for (size_t i = *pos; i <= m->mask; i++)
                if (m->used[i]) {
                        *pos = i + 1;
                        *ret_key = key_at(m, i);
                        *ret_value = m->values[i];
                        return true;
                }
        *pos = m->mask + 1;
        return false;
}
