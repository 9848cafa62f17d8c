/* echoc's shared vocabulary: the parsed options, the session every report describes, the modes. */
#pragma once

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "echoc/net.h"
#include "shared/ipaddr.h"

/* Exit statuses (ecosystem.md §7); --nagios maps them to 0/1/2/3. */
enum {
        EXIT_INTACT = 0,   /* every byte or probe echoed intact */
        EXIT_MISMATCH = 1, /* mismatch, loss, short echo, no echo */
        EXIT_ERROR = 2,    /* usage, resolution, connection set-up */
};

enum {
        NAGIOS_OK = 0,
        NAGIOS_WARNING = 1,
        NAGIOS_CRITICAL = 2,
        NAGIOS_UNKNOWN = 3,
};

typedef enum Mode {
        MODE_STREAM,
        MODE_PING,
        MODE_LOAD,
} Mode;

typedef enum Output {
        OUTPUT_TEXT,
        OUTPUT_JSON,
        OUTPUT_NAGIOS,
} Output;

typedef struct Options {
        Mode mode;
        Output output;
        bool udp; /* --udp: ping and load over UDP datagrams */
        int family; /* AF_UNSPEC, AF_INET or AF_INET6 */
        const char *host;
        const char *port;
        bool verbose;

        uint64_t timeout_usec; /* -W: connect and echo; 0 = none */
        uint64_t count;        /* -c: 0 = until interrupted */
        uint64_t interval_usec;
        uint64_t deadline_usec; /* -w: 0 = none */
        size_t size;
        bool quiet;
        bool connect_per_probe;

        unsigned connections;
        uint64_t duration_usec;
        uint64_t rate; /* new connections per second; 0 = unlimited */
        bool persistent;
        unsigned window; /* UDP load: datagrams outstanding at most */

        int proxy_version; /* 0 = none */
        bool proxy_source_set;
        IpAddr proxy_source;

        double warning_rtt_ms, critical_rtt_ms; /* NAN = not set */
        double warning_loss, critical_loss;
} Options;

/* What every report describes: where we connected and how it ended. */
typedef struct Session {
        const Options *opts;
        Target target;
        bool connected;
        IpAddr local, remote;
        uint64_t start_wall_usec;
        char error[256]; /* set once, by the mode's decision point; empty = none */
} Session;

/* Set by the SIGINT handler in ping and load modes. */
extern volatile sig_atomic_t echoc_interrupted;

/* Each returns the process exit status. */
int stream_run(Session *s);
int ping_run(Session *s);
int load_run(Session *s);
int udp_ping_run(Session *s);
int udp_load_run(Session *s);

/* Connect to the target's addresses in turn (TCP: each within -W; UDP: a connected datagram
 * socket, see net_udp_connect()). Returns the fd and fills s->local/remote, or -errno with
 * s->error naming every address that failed. */
int session_connect(Session *s);

/* The PROXY header for a connection from local to remote, honouring --proxy-source.
 * Returns its length (0 without --proxy) or -errno. */
int session_proxy_header(const Session *s, int fd, uint8_t *buf, size_t size);
