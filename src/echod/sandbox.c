/* The children's seccomp filter, compiled once in the master and handed to echod-spawner, which
 * loads it into itself once (child.c); every child it forks inherits it.
 *
 * Why libseccomp: it resolves syscall numbers per architecture and emits correct BPF with
 * the architecture check; hand-written BPF is where sandboxes get subtle bugs. It runs only in
 * the master: the spawner and the children never link it. */
#include "echod/sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shared/io.h"
#include "shared/macro.h"

struct Sandbox {
        bool filter;
        struct sock_fprog prog;
};

/* What the echo loop needs (worker.c, child.c), and the spawner's loop (spawner-main.c): the
 * filter is loaded once into the spawner and inherited by every child, so it must let a child do
 * nothing that reaches beyond its own connection (echod(8), SECURITY):
 *   - no way to signal: no kill, tgkill, tkill, rt_sigqueueinfo, pidfd_*; fcntl only F_GETFL and
 *     F_SETFL (F_SETOWN/F_SETSIG would aim SIGIO at another process). The master signals the
 *     children through the spawner's process group instead; abort() ends in SIGSYS, not SIGABRT.
 *   - no new file descriptors beyond dup3 of its own (RLIMIT_NOFILE 16): no open, socket, pipe,
 *     accept, memfd; no mmap, so no memory shared with anyone.
 *   - of the spawner's calls, only clone could serve a child, and its RLIMIT_NPROC is 0 (the
 *     master refuses to run children as root, whom the kernel does not hold to it).
 *   - prlimit64 on the caller only, setsockopt for SO_RCVTIMEO only (below). */
static const int allowed_connection[] = {
        /* the echo loop; its two calls per echo first (the filter tests in this order) */
        SCMP_SYS(recvfrom),     SCMP_SYS(sendto),     SCMP_SYS(read),         SCMP_SYS(write),
        SCMP_SYS(readv),        SCMP_SYS(writev),     SCMP_SYS(recvmsg),      SCMP_SYS(sendmsg),
        SCMP_SYS(ppoll),        SCMP_SYS(poll),       SCMP_SYS(shutdown),
        SCMP_SYS(close),        SCMP_SYS(getsockopt),
        SCMP_SYS(clock_gettime), SCMP_SYS(gettimeofday), SCMP_SYS(rt_sigreturn), SCMP_SYS(rt_sigprocmask),
        SCMP_SYS(restart_syscall), SCMP_SYS(exit),    SCMP_SYS(exit_group),   SCMP_SYS(getpid),
        SCMP_SYS(gettid),
        /* a child's setup after fork */
        SCMP_SYS(set_robust_list), SCMP_SYS(dup3),    SCMP_SYS(close_range),
        /* the spawner: fork, reap */
        SCMP_SYS(clone),        SCMP_SYS(wait4),
};

/* The UDP worker (udp-worker.c) and the spawner that forks it: batches of datagrams on the socket
 * it was handed, messages on its control channel, and memory of its own (its source tables are
 * sized by the policy it is sent, after the fork): brk, and mmap only private, anonymous and not
 * executable (below). Nothing to write or read a byte stream with, no shutdown, no setsockopt. */
static const int allowed_datagram[] = {
        SCMP_SYS(recvmmsg),     SCMP_SYS(sendmmsg),   SCMP_SYS(poll),         SCMP_SYS(ppoll),
        SCMP_SYS(recvmsg),      SCMP_SYS(recvfrom),   SCMP_SYS(sendto),       SCMP_SYS(read),
        SCMP_SYS(close),
        SCMP_SYS(clock_gettime), SCMP_SYS(gettimeofday), SCMP_SYS(rt_sigreturn), SCMP_SYS(rt_sigprocmask),
        SCMP_SYS(restart_syscall), SCMP_SYS(exit),    SCMP_SYS(exit_group),   SCMP_SYS(getpid),
        SCMP_SYS(gettid),       SCMP_SYS(brk),        SCMP_SYS(munmap),       SCMP_SYS(madvise),
        /* the source tables' hash seed (arc4random_buf), so no peer can aim at one bucket */
        SCMP_SYS(getrandom),
        SCMP_SYS(set_robust_list), SCMP_SYS(dup3),    SCMP_SYS(close_range),
        SCMP_SYS(clone),        SCMP_SYS(wait4),
};

#if defined(__SANITIZE_ADDRESS__)
/* the sanitizer runtimes allocate and report on their own */
static const int allowed_sanitizer[] = {
        SCMP_SYS(mmap),         SCMP_SYS(munmap),     SCMP_SYS(madvise),      SCMP_SYS(brk),
        SCMP_SYS(sigaltstack),  SCMP_SYS(rt_sigaction), SCMP_SYS(sched_yield), SCMP_SYS(futex),
        SCMP_SYS(prctl),        SCMP_SYS(readlink),   SCMP_SYS(open),         SCMP_SYS(openat),
        SCMP_SYS(mprotect),
};
#endif

static int allow_all(scmp_filter_ctx ctx, const int *calls, size_t n) {
        int r = 0;

        for (size_t i = 0; i < n && r >= 0; i++)
                r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, calls[i], 0);
        return r;
}

static int compile_filter(SpawnKind kind, struct sock_fprog *ret) {
        _cleanup_(closep) int fd = -1;
        scmp_filter_ctx ctx;
        off_t size;
        int r = 0;

        ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
        if (!ctx)
                return -ENOMEM;
        if (kind == SPAWN_KIND_DATAGRAM) {
                r = allow_all(ctx, allowed_datagram, ELEMENTSOF(allowed_datagram));
                /* malloc(): private anonymous memory, never executable, never shared */
                if (r >= 0)
                        r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 2,
                                             SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0),
                                             SCMP_A3(SCMP_CMP_MASKED_EQ, MAP_SHARED_VALIDATE | MAP_ANONYMOUS,
                                                     MAP_PRIVATE | MAP_ANONYMOUS));
        } else {
                r = allow_all(ctx, allowed_connection, ELEMENTSOF(allowed_connection));
                /* the worker making its socket blocking (fd_set_nonblock) */
                for (unsigned i = 0; i < 2 && r >= 0; i++)
                        r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(fcntl), 1,
                                             SCMP_A1(SCMP_CMP_EQ, i == 0 ? F_GETFL : F_SETFL));
                /* the worker's receive timeout (its deadlines, and a drain cutting a wait short) */
                if (r >= 0)
                        r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(setsockopt), 2,
                                             SCMP_A1(SCMP_CMP_EQ, SOL_SOCKET), SCMP_A2(SCMP_CMP_EQ, SO_RCVTIMEO));
        }
#if defined(__SANITIZE_ADDRESS__)
        if (r >= 0)
                r = allow_all(ctx, allowed_sanitizer, ELEMENTSOF(allowed_sanitizer));
#endif
        /* setrlimit(): a child's RLIMIT_NPROC, pid 0 = itself */
        if (r >= 0)
                r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prlimit64), 1, SCMP_A0(SCMP_CMP_EQ, 0));
        /* no_new_privs is set explicitly by the spawner, right before loading */
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
        if (ret->len > SPAWN_FILTER_MAX) {
                free(ret->filter);
                return -E2BIG;
        }
        return 0;
}

int sandbox_new(bool enabled, SpawnKind kind, Sandbox **ret) {
        Sandbox *s = calloc(1, sizeof(Sandbox));
        int r;

        if (!s)
                return -ENOMEM;
        if (enabled) {
                r = compile_filter(kind, &s->prog);
                if (r < 0) {
                        free(s);
                        return r;
                }
                s->filter = true;
        }
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

void sandbox_request(const Sandbox *s, SpawnSandbox *ret) {
        ret->type = SPAWN_SANDBOX;
        ret->enabled = s->filter;
        ret->filter_len = s->filter ? s->prog.len : 0;
        if (ret->filter_len > 0)
                memcpy(ret->filter, s->prog.filter, ret->filter_len * sizeof(struct sock_filter));
}
