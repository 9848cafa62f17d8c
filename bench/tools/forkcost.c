/* forkcost: what a fork + exit costs, with and without a seccomp filter loaded in the child.
 *
 *   cc -O2 -o forkcost bench/tools/forkcost.c && ./forkcost 0 2 60
 *
 * For each filter length given (0 = no filter), forks 20,000 children that load a filter of that
 * many instructions (all but the last a load, the last "allow") and exit; prints the mean wall
 * time per fork + exit + wait. Link it statically (-static) to see a small process's fork. This is
 * what showed that echod's children spent more on loading their filter than the textbook server
 * spends on a whole connection (bench/FINDINGS.md). */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 20000
#define INSN_MAX 1024

static double now(void) {
        struct timespec t;

        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double) t.tv_sec + (double) t.tv_nsec / 1e9;
}

int main(int argc, char *argv[]) {
        static struct sock_filter filter[INSN_MAX];

        if (argc < 2) {
                fprintf(stderr, "usage: %s INSTRUCTIONS...\n", argv[0]);
                return 2;
        }
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
                perror("PR_SET_NO_NEW_PRIVS");
                return 1;
        }
        for (int a = 1; a < argc; a++) {
                int n = atoi(argv[a]);
                if (n < 0 || n > INSN_MAX) {
                        fprintf(stderr, "%s: 0 to %d instructions\n", argv[a], INSN_MAX);
                        return 2;
                }
                for (int i = 0; i + 1 < n; i++)
                        filter[i] = (struct sock_filter) BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                                                  offsetof(struct seccomp_data, nr));
                if (n > 0)
                        filter[n - 1] = (struct sock_filter) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
                struct sock_fprog prog = { .len = (unsigned short) n, .filter = filter };

                double t0 = now();
                for (int r = 0; r < ROUNDS; r++) {
                        pid_t pid = fork();
                        if (pid == 0) {
                                if (n > 0 && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
                                        _exit(1);
                                _exit(0);
                        }
                        if (pid < 0) {
                                perror("fork");
                                return 1;
                        }
                        int status;
                        if (waitpid(pid, &status, 0) < 0 || status != 0) {
                                fprintf(stderr, "child failed (status %d)\n", status);
                                return 1;
                        }
                }
                printf("%4d instructions: %6.1f µs per fork + filter + exit\n", n, (now() - t0) / ROUNDS * 1e6);
        }
        return 0;
}
