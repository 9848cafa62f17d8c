/* Memory helpers: the master's own tables, kept out of fork() children; arrays that grow. */
#pragma once

#include <stddef.h>

/* Make *array (a pointer to an array of *allocated elements of size bytes; NULL and 0 at first)
 * hold at least need elements, doubling (16 at least). Returns 0 or -ENOMEM (*array unchanged). */
int mem_grow(void *array, size_t *allocated, size_t need, size_t size);

/* Zeroed, page-granular memory that fork() does not copy (MADV_DONTFORK): pages never touched
 * cost nothing, and a fork neither copies their page tables nor makes the parent take
 * copy-on-write faults on them afterwards. Only for data a child never reads — in a child the
 * range is unmapped. Returns NULL on ENOMEM. */
void *mem_alloc_unshared(size_t size);
void mem_free_unshared(void *p, size_t size);
