/* What a dead spawner leaves behind: which of the master's children holds a connection. */
#include "echod/orphans.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shared/macro.h"

static void closedirp(DIR **d) {
        if (*d)
                closedir(*d);
}

static void fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}

static bool holds(pid_t pid, const char *want) {
        char dir[64], target[64];
        _cleanup_(closedirp) DIR *d = NULL;
        struct dirent *e;

        snprintf(dir, sizeof(dir), "/proc/%d/fd", (int) pid);
        d = opendir(dir);
        if (!d)
                return false; /* gone, or a zombie */
        while ((e = readdir(d))) {
                if (e->d_name[0] == '.')
                        continue;
                ssize_t n = readlinkat(dirfd(d), e->d_name, target, sizeof(target) - 1);
                if (n <= 0)
                        continue;
                target[n] = 0;
                if (strcmp(target, want) == 0)
                        return true;
        }
        return false;
}

pid_t orphans_find_holder(int fd, bool (*skip)(void *userdata, pid_t pid), void *userdata) {
        char path[64], want[48];
        _cleanup_(fclosep) FILE *f = NULL;
        struct stat st;
        long pid;

        if (fstat(fd, &st) < 0)
                return negative_errno();
        snprintf(want, sizeof(want), "socket:[%llu]", (unsigned long long) st.st_ino);
        /* the master is one thread: its children are its main thread's */
        snprintf(path, sizeof(path), "/proc/self/task/%d/children", (int) getpid());
        f = fopen(path, "re");
        if (!f)
                return negative_errno();
        while (fscanf(f, "%ld", &pid) == 1)
                if (pid > 0 && !(skip && skip(userdata, (pid_t) pid)) && holds((pid_t) pid, want))
                        return (pid_t) pid;
        return -ESRCH;
}
