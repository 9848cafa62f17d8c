/* The child, from fork() to the echo loop. */
#pragma once

#include "echod/sandbox.h"
#include "echod/worker.h"

/* In the freshly forked child: reset signal dispositions and mask (SIGTERM asks for a drain),
 * make the connection fd 3 and close every other fd above stdio, set the process title to the
 * peer, enter the sandbox, echo, and _exit with a WorkerExit. */
_Noreturn void child_main(int fd, SlotShared *slot, const WorkerParams *p, const IpAddr *peer, const Sandbox *sb);
