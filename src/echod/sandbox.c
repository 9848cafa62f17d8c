/* The child's sandbox: a seccomp allow-list compiled once in the master, resource limits and
 * no_new_privs applied in each child before it touches peer data, and no capabilities at all.
 *
 * Why libseccomp: it resolves syscall numbers per architecture and emits correct BPF with
 * the architecture check; hand-written BPF is where sandboxes get subtle bugs. It runs only in
 * the master at startup: the child loads the exported program with one prctl(). */
#include "echod/sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shared/io.h"
#include "shared/macro.h"

/* How far above the master a child's oom_score_adj goes: the kernel kills a child first. */
#define CHILD_OOM_BONUS 500
/* stdio, the connection, a splice pipe, and slack */
#define CHILD_NOFILE 16

struct Sandbox {
        bool filter;
        struct sock_fprog prog;
        char oom_score_adj[16];
};

/* What the echo loop needs, and no more (see worker.c). */
static const int allowed[] = {
        SCMP_SYS(read),         SCMP_SYS(write),      SCMP_SYS(readv),        SCMP_SYS(writev),
        SCMP_SYS(recvfrom),     SCMP_SYS(sendto),     SCMP_SYS(recvmsg),      SCMP_SYS(sendmsg),
        SCMP_SYS(ppoll),        SCMP_SYS(poll),       SCMP_SYS(fcntl),        SCMP_SYS(shutdown),
        SCMP_SYS(close),        SCMP_SYS(splice),     SCMP_SYS(pipe2),        SCMP_SYS(getsockopt),
        SCMP_SYS(clock_gettime), SCMP_SYS(gettimeofday), SCMP_SYS(rt_sigreturn), SCMP_SYS(rt_sigprocmask),
        SCMP_SYS(restart_syscall), SCMP_SYS(exit),    SCMP_SYS(exit_group),   SCMP_SYS(getpid),
        SCMP_SYS(gettid),       SCMP_SYS(tgkill), /* abort() */
#if defined(__SANITIZE_ADDRESS__)
        /* the sanitizer runtimes allocate and report on their own */
        SCMP_SYS(mmap),         SCMP_SYS(munmap),     SCMP_SYS(madvise),      SCMP_SYS(brk),
        SCMP_SYS(sigaltstack),  SCMP_SYS(rt_sigaction), SCMP_SYS(sched_yield), SCMP_SYS(futex),
        SCMP_SYS(prctl),        SCMP_SYS(readlink),   SCMP_SYS(open),         SCMP_SYS(openat),
        SCMP_SYS(mprotect),
#endif
};

static int compile_filter(struct sock_fprog *ret) {
        _cleanup_(closep) int fd = -1;
        scmp_filter_ctx ctx;
        off_t size;
        int r = 0;

        ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
        if (!ctx)
                return -ENOMEM;
        for (size_t i = 0; i < ELEMENTSOF(allowed) && r >= 0; i++)
                r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, allowed[i], 0);
        /* no_new_privs is set explicitly in the child, right before loading */
        if (r >= 0)
                r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
        if (r >= 0) {
                fd = memfd_create("echod-seccomp", MFD_CLOEXEC);
                r = fd < 0 ? negative_errno() : seccomp_export_bpf(ctx, fd);
        }
        seccomp_release(ctx);
        if (r < 0)
                return r;

        size = lseek(fd, 0, SEEK_END);
        if (size <= 0 || size % (off_t) sizeof(struct sock_filter) != 0 || lseek(fd, 0, SEEK_SET) < 0)
                return -EIO;
        ret->filter = malloc((size_t) size);
        if (!ret->filter)
                return -ENOMEM;
        if (read_full(fd, ret->filter, (size_t) size) != (ssize_t) size) {
                free(ret->filter);
                return -EIO;
        }
        ret->len = (unsigned short) ((size_t) size / sizeof(struct sock_filter));
        return 0;
}

static int own_oom_score_adj(int *ret) {
        char buf[16] = { 0 };
        _cleanup_(closep) int fd = open("/proc/self/oom_score_adj", O_RDONLY | O_CLOEXEC);

        if (fd < 0)
                return negative_errno();
        if (read_full(fd, buf, sizeof(buf) - 1) <= 0)
                return -EIO;
        *ret = atoi(buf);
        return 0;
}

int sandbox_new(bool enabled, Sandbox **ret) {
        Sandbox *s = calloc(1, sizeof(Sandbox));
        int master_adj = 0, r;

        if (!s)
                return -ENOMEM;
        if (enabled) {
                r = compile_filter(&s->prog);
                if (r < 0) {
                        free(s);
                        return r;
                }
                s->filter = true;
        }
        (void) own_oom_score_adj(&master_adj);
        snprintf(s->oom_score_adj, sizeof(s->oom_score_adj), "%d", MIN(master_adj + CHILD_OOM_BONUS, 1000));
        *ret = s;
        return 0;
}

Sandbox *sandbox_free(Sandbox *s) {
        if (s) {
                free(s->prog.filter);
                free(s);
        }
        return NULL;
}

int sandbox_enter(const Sandbox *s) {
        static const struct {
                int resource;
                rlim_t limit;
        } limits[] = {
                { RLIMIT_NPROC, 0 }, /* no further forks (root would be exempt: it is not root) */
                { RLIMIT_NOFILE, CHILD_NOFILE },
                { RLIMIT_CORE, 0 }, /* no core file with peer data in it */
        };
        int fd;

        /* Raising one's own oom_score_adj needs no privilege, but after the master changed
         * uid it is not dumpable and /proc/self belongs to root: become dumpable just for the
         * write (before any peer data is read), then not again. A failure is not fatal. */
        int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
        if (dumpable == 0)
                (void) prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
        fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
                (void) write_full(fd, s->oom_score_adj, strlen(s->oom_score_adj));
                close(fd);
        }
        if (dumpable == 0)
                (void) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
        /* whatever the master holds (CAP_NET_BIND_SERVICE from the unit), a child needs none:
         * empty the ambient, inheritable, permitted and effective sets (no privilege needed) */
        struct __user_cap_header_struct head = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3] = { { 0, 0, 0 } };
        (void) prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        if (syscall(SYS_capset, &head, none) < 0)
                return negative_errno();
        if (!s->filter)
                return 0; /* sandbox = false: debugging with gdb, strace or valgrind */

        /* a limit that cannot be set is a sandbox that is not there: fail closed */
        for (size_t i = 0; i < ELEMENTSOF(limits); i++) {
                struct rlimit rl = { limits[i].limit, limits[i].limit };
                if (setrlimit(limits[i].resource, &rl) < 0)
                        return negative_errno();
        }
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
                return negative_errno();
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &s->prog, 0, 0) < 0)
                return negative_errno();
        return 0;
}
