/* Full reads and writes that survive partial transfers and EINTR. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

/* Write all of buf to a blocking fd. Returns 0 or -errno. */
int write_full(int fd, const void *buf, size_t len);

/* Read until len bytes or EOF. Returns bytes read (short only at EOF) or -errno. */
ssize_t read_full(int fd, void *buf, size_t len);

/* Set or clear O_NONBLOCK. Returns 0 or -errno. */
int fd_set_nonblock(int fd, int nonblock);
