/* Dropping root for good: setgroups, setresgid, setresuid, each checked, then proven.
 * Order per CERT POS36-C: supplementary groups, then gid, then uid; then verify (POS37-C). */
#include "echod/privs.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include "shared/macro.h"

int privileges_drop(const char *user, const char *group) {
        uid_t ruid, euid, suid;
        gid_t rgid, egid, sgid;
        struct passwd *pw;
        gid_t gid;

        errno = 0;
        pw = getpwnam(user);
        if (!pw)
                return errno ? -errno : -ESRCH;
        gid = pw->pw_gid;
        if (group && group[0]) {
                errno = 0;
                struct group *gr = getgrnam(group);
                if (!gr)
                        return errno ? -errno : -ESRCH;
                gid = gr->gr_gid;
        }
        uid_t uid = pw->pw_uid;

        if (setgroups(0, NULL) < 0)
                return negative_errno();
        if (setresgid(gid, gid, gid) < 0)
                return negative_errno();
        if (setresuid(uid, uid, uid) < 0)
                return negative_errno();

        if (getresuid(&ruid, &euid, &suid) < 0 || getresgid(&rgid, &egid, &sgid) < 0)
                return negative_errno();
        if (ruid != uid || euid != uid || suid != uid || rgid != gid || egid != gid || sgid != gid)
                return -EPERM;
        if (getgroups(0, NULL) != 0)
                return -EPERM;
        /* root must be gone for good */
        if (uid != 0 && (setuid(0) == 0 || seteuid(0) == 0))
                return -EPERM;
        if (gid != 0 && (setgid(0) == 0 || setegid(0) == 0))
                return -EPERM;
        return 0;
}
