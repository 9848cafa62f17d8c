/* The child, from fork() to the echo loop; it runs in a copy of echod-spawner. */
#pragma once

#include <stddef.h>

#include "echod/spawn-proto.h"

/* Once, in the spawner: what every child inherits instead of doing it itself. Empties every
 * capability set, raises oom_score_adj above the master's (the kernel kills children first), and
 * installs the SIGTERM handler (SIGTERM asks a child to drain: worker_request_stop(); the spawner
 * keeps it blocked, each child unblocks it). Returns 0 or -errno. */
int child_prepare_once(void);

/* Once, in the spawner, at the first SPAWN_SANDBOX: fd and core limits, no_new_privs, and the
 * seccomp filter, inherited by every child. Returns 0 or -errno; the spawner must not go on if
 * this fails. */
int sandbox_enter_spawner(const SpawnSandbox *s);

/* In the freshly forked child: make the connection fd 3 and close every other fd above stdio
 * (which the master made /dev/null), write the title over the spawner's argument area, enter the
 * sandbox, echo, and _exit with a WorkerExit. */
_Noreturn void child_main(int fd, const SpawnConnection *req, const SpawnSandbox *sb, char *title_area,
                          size_t title_size);

/* In a spare, forked ahead of need (spawner-main.c): keep stdio and chan, the receiving end of the
 * spare channel, and nothing else; enter the sandbox; wait for one SpawnConnection with its
 * connection (SCM_RIGHTS); answer with our pid; close chan; then as child_main(). The spawner's end
 * closing before that is an _exit(0) with no connection. */
_Noreturn void child_spare_main(int chan, const SpawnSandbox *sb, char *title_area, size_t title_size);
