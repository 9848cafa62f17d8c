/* Memory for the master's own tables, kept out of fork() children. */
#include "shared/mem.h"

#include <sys/mman.h>

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
