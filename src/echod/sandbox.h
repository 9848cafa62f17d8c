/* The children's sandbox as the master prepares it: a seccomp allow-list compiled once. */
#pragma once

#include <stdbool.h>

#include "echod/spawn-proto.h"

typedef struct Sandbox Sandbox;

/* In the master, once per setting: compile the seccomp filter (libseccomp) to BPF kept in memory.
 * enabled = false (for debugging with gdb, strace, valgrind) leaves out the filter, no_new_privs
 * and the resource limits; capabilities are dropped and oom_score_adj raised all the same (by the
 * spawner, once). kind picks the allow-list: a connection's, or a UDP worker's. Returns 0 or
 * -errno. */
int sandbox_new(bool enabled, SpawnKind kind, Sandbox **ret);
Sandbox *sandbox_free(Sandbox *s);

/* The SPAWN_SANDBOX message that tells echod-spawner what each later child applies. */
void sandbox_request(const Sandbox *s, SpawnSandbox *ret);
