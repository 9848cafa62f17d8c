/* Full reads and writes that survive partial transfers and EINTR; passing a descriptor. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

/* Write all of buf to a blocking fd. Returns 0 or -errno. */
int write_full(int fd, const void *buf, size_t len);

/* Read until len bytes or EOF. Returns bytes read (short only at EOF) or -errno. */
ssize_t read_full(int fd, void *buf, size_t len);

/* One message of len bytes carrying fd (SCM_RIGHTS), without blocking or SIGPIPE. Returns 0 or
 * -errno (-EAGAIN: the socket is full). */
int send_with_fd(int sock, const void *buf, size_t len, int fd);

/* One message into buf (at most len bytes), and the descriptor it carries, if any (*ret_fd, else
 * -1; close-on-exec). flags: recvmsg()'s, e.g. MSG_DONTWAIT. Returns the message's length (0: the
 * peer closed) or -errno. */
ssize_t recv_with_fd(int sock, void *buf, size_t len, int flags, int *ret_fd);

/* Set or clear O_NONBLOCK. Returns 0 or -errno. */
int fd_set_nonblock(int fd, int nonblock);
