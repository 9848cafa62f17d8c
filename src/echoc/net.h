/* echoc's network set-up: resolve HOST [PORT], connect (TCP with a timeout, UDP), describe endpoints. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "shared/ipaddr.h"

#define TARGET_ADDRS_MAX 16

typedef struct Target {
        const char *host;
        const char *port;
        size_t n_addrs;
        IpAddr addrs[TARGET_ADDRS_MAX];
} Target;

/* getaddrinfo(host, port) for TCP (udp false) or UDP, limited to family (AF_UNSPEC for both).
 * Returns 0, or -EHOSTUNREACH with *ret_gai set to the getaddrinfo error (for gai_strerror). */
int net_resolve(const char *host, const char *port, int family, bool udp, Target *ret, int *ret_gai);

/* Non-blocking CLOEXEC TCP socket connected to a within timeout_usec (0 = no limit), TCP_NODELAY
 * set. Returns the fd (still non-blocking) or -errno: -ETIMEDOUT, -ECONNREFUSED, -EINTR (a signal
 * arrived while waiting) and so on. */
int net_connect(const IpAddr *a, uint64_t timeout_usec);

/* A non-blocking CLOEXEC UDP socket connect()ed to a: only a's datagrams arrive, and an ICMP
 * port unreachable comes back as ECONNREFUSED. Returns the fd or -errno. */
int net_udp_connect(const IpAddr *a);

/* Start a non-blocking connect; returns the fd (connect in progress or done) or -errno. */
int net_connect_start(const IpAddr *a);

/* The pending error of a non-blocking connect (SO_ERROR): 0 or -errno. */
int net_connect_result(int fd);

/* Local and remote endpoints of a connected socket. Returns 0 or -errno. */
int net_endpoints(int fd, IpAddr *ret_local, IpAddr *ret_remote);

/* Send a short buffer (a PROXY header) on a non-blocking socket, waiting up to timeout_usec.
 * Returns 0 or -errno. */
int net_send_all(int fd, const void *buf, size_t len, uint64_t timeout_usec);

/* Wait for events on fd until deadline (monotonic usec; 0 = forever). Returns revents, 0 on
 * timeout, or -errno (-EINTR on a signal). */
int net_wait(int fd, short events, uint64_t deadline);
