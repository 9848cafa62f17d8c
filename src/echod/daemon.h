/* Classic daemonising for non-systemd use: fork, setsid, fork, pidfile, and a readiness pipe. */
#pragma once

#include <stdbool.h>

/* daemon(7) step 1: close every fd inherited from the starter but stdio and socket-activated
 * ones, so no caller waiting for EOF on a pipe it passed us hangs for our lifetime. First thing
 * in main, before echod opens anything of its own. */
void daemon_close_inherited_fds(void);

/* Before binding: create and flock the pidfile, so that a second instance is told the first
 * runs rather than that its port is busy. pidfile may be NULL or "" for none; -EEXIST if
 * another instance holds it. A symlink at the path (-ELOOP), anything but a regular file
 * (-EINVAL) or a file with more than one link (-EMLINK) is refused, with the reason logged.
 * The lock is inherited by the daemon. */
int daemon_lock_pidfile(const char *pidfile);

/* Detach. Returns only in the daemon (0) or on failure before forking (-errno). The starting
 * process waits on a pipe and exits 0 once daemon_ready() is called, or 1 printing whatever
 * error the daemon reported (see log_set_startup_fd()) if it exits first. */
int daemonize(void);

/* In the daemon: write the pidfile (if any) — call before dropping privileges. */
int daemon_write_pidfile(void);

/* In the daemon: tell the starting process we are up; it then exits 0. */
void daemon_ready(void);

/* Remove the pidfile at exit (best effort). */
void daemon_remove_pidfile(void);
