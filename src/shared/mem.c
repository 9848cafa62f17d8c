/* Memory helpers: the master's own tables, kept out of fork() children; arrays that grow. */
#include "shared/mem.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

int mem_grow(void *array, size_t *allocated, size_t need, size_t size) {
        void **a = array;
        size_t n = *allocated > 0 ? *allocated : 16;

        if (need <= *allocated)
                return 0;
        while (n < need)
                n *= 2;
        void *q = reallocarray(*a, n, size);
        if (!q)
                return -ENOMEM;
        *a = q;
        *allocated = n;
        return 0;
}

void *mem_alloc_unshared(size_t size) {
        void *p;

        if (size == 0)
                size = 1;
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
                return NULL;
        /* best effort: if the kernel refuses, the memory is merely inherited as before */
        (void) madvise(p, size, MADV_DONTFORK);
        return p;
}

void mem_free_unshared(void *p, size_t size) {
        if (p)
                (void) munmap(p, size ? size : 1);
}
