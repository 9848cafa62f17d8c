/* A connection's byte counts and idle time, as the kernel keeps them (TCP_INFO).
 *
 * The master holds every admitted connection's socket until its process is gone and reads these
 * from it: nothing a child writes is believed (echod(8), SECURITY). */
#pragma once

#include <stdint.h>

typedef struct ConnStat {
        uint64_t in;        /* bytes read off the socket by echod, past `skip` */
        uint64_t out;       /* bytes written to it: delivered, or left to the kernel to deliver */
        uint64_t idle_usec; /* since data last moved either way */
} ConnStat;

/* skip: bytes echod itself consumed before the child (a PROXY header). worker_exit: how the
 * child ended (a WorkerExit), or -1 while it lives; it tells a peer's FIN from a reset once the
 * socket is closed. Returns 0, or -errno (not a TCP socket: *ret is zero). */
int connstat_read(int fd, uint64_t skip, int worker_exit, ConnStat *ret);
