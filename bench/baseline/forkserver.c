/* The textbook fork-per-connection echo server, kept as the benchmark's reference.
 *
 * Stevens, UNIX Network Programming vol. 1, 3rd ed., figures 5.2/5.3 (tcpserv01, str_echo) with
 * the SIGCHLD handler of figure 5.11 (waitpid loop, tcpserv04): socket, bind, listen; loop on
 * accept; fork; the child closes the listener and echoes with read/write until EOF; the parent
 * closes the connection; children are reaped from SIGCHLD. MAXLINE is the book's 4096.
 * Nothing else: no limits, no timeouts, no logging. Deliberately not in echod's house style.
 *
 * usage: forkserver ADDR PORT [BUFSIZE]   (BUFSIZE only for the large-buffer variant) */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXLINE 4096
#define LISTENQ 1024

static size_t bufsize = MAXLINE;

static void sig_chld(int signo) {
        int saved = errno;
        (void) signo;
        while (waitpid(-1, NULL, WNOHANG) > 0)
                ;
        errno = saved;
}

static ssize_t writen(int fd, const char *p, size_t n) {
        size_t left = n;
        while (left > 0) {
                ssize_t w = write(fd, p, left);
                if (w <= 0) {
                        if (w < 0 && errno == EINTR)
                                continue;
                        return -1;
                }
                left -= (size_t) w;
                p += w;
        }
        return (ssize_t) n;
}

static void str_echo(int sockfd) {
        char line[MAXLINE], *buf = bufsize <= MAXLINE ? line : malloc(bufsize);
        ssize_t n;

        if (!buf)
                return;
again:
        while ((n = read(sockfd, buf, bufsize)) > 0)
                if (writen(sockfd, buf, (size_t) n) < 0)
                        return;
        if (n < 0 && errno == EINTR)
                goto again;
}

int main(int argc, char **argv) {
        struct sockaddr_in servaddr = { .sin_family = AF_INET };
        struct sigaction sa = { .sa_handler = sig_chld };
        int listenfd, connfd, on = 1;

        if (argc < 3 || inet_pton(AF_INET, argv[1], &servaddr.sin_addr) != 1) {
                fprintf(stderr, "usage: forkserver ADDR PORT [BUFSIZE]\n");
                return 2;
        }
        servaddr.sin_port = htons((uint16_t) atoi(argv[2]));
        if (argc > 3)
                bufsize = (size_t) atol(argv[3]);

        listenfd = socket(AF_INET, SOCK_STREAM, 0);
        if (listenfd < 0 || setsockopt(listenfd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 ||
            bind(listenfd, (struct sockaddr *) &servaddr, sizeof(servaddr)) < 0 || listen(listenfd, LISTENQ) < 0) {
                perror("forkserver: listen");
                return 1;
        }
        sigemptyset(&sa.sa_mask);
        sigaction(SIGCHLD, &sa, NULL); /* no SA_RESTART: accept returns EINTR, as in the book */

        for (;;) {
                connfd = accept(listenfd, NULL, NULL);
                if (connfd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        perror("forkserver: accept");
                        sleep(1); /* EMFILE and friends: do not spin */
                        continue;
                }
                pid_t pid = fork();
                if (pid == 0) {
                        close(listenfd);
                        str_echo(connfd);
                        exit(0);
                }
                close(connfd);
        }
}
