/* What a spawner that died leaves behind: its children, now the master's (it is their subreaper),
 * some of them forked for hand-offs the spawner never reported.
 *
 * Which process has a connection is read from the kernel: the one among the master's children
 * whose file table holds that connection's socket. A child can neither get nor fake another
 * connection's socket, so nothing it wrote is believed. Never logs. */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

/* The child of ours (skipping those skip() knows already) that holds socket fd: its pid, or
 * -ESRCH if none does (it was never forked, or it has exited already), or -errno. Called after
 * the spawner was reaped: every child it forked is ours by then, with the socket open from its
 * first instant until its exit. */
pid_t orphans_find_holder(int fd, bool (*skip)(void *userdata, pid_t pid), void *userdata);
