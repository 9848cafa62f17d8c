/* A connection's byte counts from the kernel's TCP_INFO: connstat.h says why.
 *
 * A FIN takes a sequence number, and the kernel's byte counters are sequence numbers: a received
 * FIN is one byte of tcpi_bytes_received (rcv_nxt moves past it, and a reader's EOF moves
 * copied_seq past it), ours one byte of what was written. So
 *     read by the child    = bytes_received - unread (SIOCINQ, which leaves an unread FIN out)
 *                            - 1 if the peer's FIN arrived
 *     written by the child = bytes_acked + not yet acked (SIOCOUTQ: write_seq - snd_una)
 *                            - 1 if our FIN was queued
 * (unacked data counts: a child that exits leaves what it wrote to the kernel to deliver).
 * The peer's FIN arrived in CLOSE_WAIT, LAST_ACK and CLOSING; ours was queued in FIN_WAIT1/2,
 * CLOSING, LAST_ACK. In CLOSE both ended normally, unless a reset or an error closed the socket:
 * the child said so (its exit), or SO_ERROR still holds it. One case stays ambiguous, a reset
 * after the peer's FIN was read: `in` is then one byte high. */
#include "echod/connstat.h"

#include <errno.h>
#include <stdbool.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "echod/worker.h"
#include "shared/macro.h"

/* tcpi_state values: the kernel's include/net/tcp_states.h */
enum {
        STATE_FIN_WAIT1 = 4,
        STATE_FIN_WAIT2 = 5,
        STATE_CLOSE = 7,
        STATE_CLOSE_WAIT = 8,
        STATE_LAST_ACK = 9,
        STATE_CLOSING = 11,
};

/* Closed (CLOSE) the normal way: both FINs, no reset, no error. */
static bool closed_cleanly(int fd, int worker_exit) {
        int err = 0;
        socklen_t len = sizeof(err);

        if (worker_exit < 0 || worker_exit == WORKER_PEER_RESET || worker_exit == WORKER_IO_ERROR ||
            worker_exit == WORKER_SETUP_FAILED)
                return false;
        return getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
}

static unsigned fin_received(uint8_t state, bool clean) {
        return state == STATE_CLOSE_WAIT || state == STATE_LAST_ACK || state == STATE_CLOSING ||
               (state == STATE_CLOSE && clean);
}

static unsigned fin_queued(uint8_t state, bool clean) {
        return state == STATE_FIN_WAIT1 || state == STATE_FIN_WAIT2 || state == STATE_LAST_ACK ||
               state == STATE_CLOSING || (state == STATE_CLOSE && clean);
}

/* One consistent reading: TCP_INFO and the two queue sizes are three calls, and a peer's ACK (or
 * more data) landing between them would pair an old counter with a new queue size (an echo still
 * in flight when its child exited was then counted short by what was acked meanwhile). The
 * readings before and after the ioctls must agree; a live connection still moving after a few
 * tries gets the last one, a sample. */
static int read_consistent(int fd, struct tcp_info *ti, int *ret_unread, int *ret_unacked) {
        for (unsigned try = 0;; try++) {
                struct tcp_info after = { 0 };
                socklen_t len = sizeof(*ti), len_after = sizeof(after);

                *ti = (struct tcp_info) { 0 };
                if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &len) < 0)
                        return negative_errno();
                if (len < offsetof(struct tcp_info, tcpi_bytes_received) + sizeof(ti->tcpi_bytes_received))
                        return -EOPNOTSUPP; /* kernel older than 4.1 */
                if (ioctl(fd, SIOCINQ, ret_unread) < 0 || *ret_unread < 0)
                        *ret_unread = 0;
                if (ioctl(fd, SIOCOUTQ, ret_unacked) < 0 || *ret_unacked < 0)
                        *ret_unacked = 0;
                if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &after, &len_after) < 0)
                        return negative_errno();
                if ((after.tcpi_bytes_acked == ti->tcpi_bytes_acked &&
                     after.tcpi_bytes_received == ti->tcpi_bytes_received && after.tcpi_state == ti->tcpi_state) ||
                    try == 7)
                        return 0;
        }
}

int connstat_read(int fd, uint64_t skip, int worker_exit, ConnStat *ret) {
        struct tcp_info ti;
        int unread = 0, unacked = 0;

        *ret = (ConnStat) { 0 };
        int r = read_consistent(fd, &ti, &unread, &unacked);
        if (r < 0)
                return r;
        bool clean = ti.tcpi_state == STATE_CLOSE && closed_cleanly(fd, worker_exit);

        uint64_t minus = (uint64_t) unread + fin_received(ti.tcpi_state, clean) + skip;
        ret->in = ti.tcpi_bytes_received > minus ? ti.tcpi_bytes_received - minus : 0;
        uint64_t written = ti.tcpi_bytes_acked + (uint64_t) unacked;
        unsigned fin = fin_queued(ti.tcpi_state, clean);
        ret->out = written > fin ? written - fin : 0;
        ret->idle_usec = (uint64_t) MIN(ti.tcpi_last_data_recv, ti.tcpi_last_data_sent) * 1000;
        return 0;
}
