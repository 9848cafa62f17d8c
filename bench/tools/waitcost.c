/* waitcost: what one waitpid(-1, WNOHANG) costs a process with N live children, against
 * waitpid(pid, WNOHANG) for one of them.
 *
 *   cc -O2 -o waitcost bench/tools/waitcost.c && ./waitcost 100 2000 10000 17000
 *
 * For each N: forks N children that wait in pause(), times 1,000 calls of each kind (none finds a
 * zombie: the cost of asking), kills and reaps them. waitpid(-1) walks the kernel's list of every
 * child; this is what showed that echod-spawner's one wait4(-1) per fork capped the connection
 * rate with many connections held (bench/FINDINGS.md). Not echod's house style: a benchmark tool. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CALLS 1000

static double now(void) {
        struct timespec t;

        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double) t.tv_sec + (double) t.tv_nsec / 1e9;
}

int main(int argc, char *argv[]) {
        for (int a = 1; a < argc; a++) {
                int n = atoi(argv[a]);
                pid_t *kids = calloc((size_t) n, sizeof(pid_t));
                if (!kids || n < 1)
                        return 1;
                for (int i = 0; i < n; i++) {
                        kids[i] = fork();
                        if (kids[i] == 0) {
                                pause();
                                _exit(0);
                        }
                        if (kids[i] < 0) {
                                perror("fork");
                                n = i;
                                break;
                        }
                }
                double t = now();
                for (int i = 0; i < CALLS; i++)
                        (void) waitpid(-1, NULL, WNOHANG);
                double any = (now() - t) / CALLS;
                t = now();
                for (int i = 0; i < CALLS; i++)
                        (void) waitpid(kids[n / 2], NULL, WNOHANG);
                double one = (now() - t) / CALLS;
                printf("%d children: waitpid(-1, WNOHANG) %.1f us, waitpid(pid, WNOHANG) %.2f us\n", n, any * 1e6,
                       one * 1e6);
                fflush(stdout);
                for (int i = 0; i < n; i++)
                        kill(kids[i], SIGKILL);
                while (wait(NULL) > 0)
                        ;
                free(kids);
        }
        return 0;
}
