/* Dropping root for good: setgroups, setresgid, setresuid, each checked, then proven. */
#pragma once

/* Resolve user (and group, "" = the user's primary group) and switch to them permanently.
 * Returns 0, -ESRCH (unknown user/group) or -errno; -EPERM if root could be regained. */
int privileges_drop(const char *user, const char *group);
