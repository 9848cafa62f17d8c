/* Memory for the master's own tables, kept out of fork() children. */
#pragma once

#include <stddef.h>

/* Zeroed, page-granular memory that fork() does not copy (MADV_DONTFORK): pages never touched
 * cost nothing, and a fork neither copies their page tables nor makes the parent take
 * copy-on-write faults on them afterwards. Only for data a child never reads — in a child the
 * range is unmapped. Returns NULL on ENOMEM. */
void *mem_alloc_unshared(size_t size);
void mem_free_unshared(void *p, size_t size);
