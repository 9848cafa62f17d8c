/* The child's sandbox: a seccomp allow-list compiled once in the master, resource limits and
 * no_new_privs applied in each child before it touches peer data. */
#pragma once

#include <stdbool.h>

typedef struct Sandbox Sandbox;

/* In the master, once: compile the seccomp filter (libseccomp) to BPF kept in memory.
 * enabled = false (for debugging with gdb, strace, valgrind) leaves out the filter, no_new_privs
 * and the resource limits; capabilities are dropped and oom_score_adj raised all the same.
 * Returns 0 or -errno. */
int sandbox_new(bool enabled, Sandbox **ret);
Sandbox *sandbox_free(Sandbox *s);

/* In the child, after its fds are set up: rlimits (no forks, few fds, no core dumps),
 * oom_score_adj above the master's, every capability dropped, no_new_privs, then the prepared filter (one prctl, no
 * compilation). From here on a forbidden syscall kills this child only (SIGSYS).
 * Returns 0 or -errno; the child must not go on if this fails. */
int sandbox_enter(const Sandbox *s);
