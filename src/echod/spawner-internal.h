/* Inside the spawner module only (spawner.c, spawner-exec.c): what spawner.c takes from
 * spawner-exec.c. No other file includes this: spawner.h is the module's interface. */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

/* Execute echod-spawner (by its path, or through the pinned fd when the path is out of reach) with
 * fd as its socket (SPAWN_FD_SOCKET; fd must be above it, or a dup2 onto itself would keep
 * O_CLOEXEC), stdio on /dev/null, spawner_blocked_signals blocked, leading a process group of its
 * own. Returns 0 and *ret_pid, or -errno. */
int spawner_exec(int fd, pid_t *ret_pid);
/* Close the fd spawner_pin() opened: nothing is executed after this. */
void spawner_unpin(void);
/* The kernel's word on a process: stopped (SIGSTOP, or a tracer's stop)? */
bool spawner_proc_stopped(pid_t pid);
