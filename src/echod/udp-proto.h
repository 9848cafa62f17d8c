/* The master ↔ UDP worker protocol: messages on the worker's control channel, a SOCK_SEQPACKET
 * socketpair whose worker end is what the spawner hands over (fd 3 in the worker).
 *
 * master → worker, in this order: UDP_MSG_SOCKET (+ SCM_RIGHTS: the UDP socket, which the master
 * keeps open), then a policy: UDP_MSG_POLICY, UDP_MSG_ADDRS until every address it announced has
 * come, UDP_MSG_COMMIT. Another policy may follow at any time (a reload); the worker applies it
 * whole at its COMMIT, between two batches. The end of the channel tells the worker to stop.
 * worker → master: UDP_MSG_COUNTERS, cumulative since the worker started, at most every
 * UDP_REPORT_MIN_USEC while they change and every UDP_REPORT_MAX_USEC in any case (a heartbeat).
 * Both ends are built from this header in one tree: no versioning. */
#pragma once

#include <stdint.h>

#include "shared/ipaddr.h"

#define UDP_ADDRS_PER_MSG 256
#define UDP_REPORT_MIN_USEC (100 * 1000)
#define UDP_REPORT_MAX_USEC (1000 * 1000)

typedef enum UdpMsgType {
        UDP_MSG_SOCKET = 1,
        UDP_MSG_POLICY,
        UDP_MSG_ADDRS,
        UDP_MSG_COMMIT,
        UDP_MSG_COUNTERS,
} UdpMsgType;

/* Why a datagram got no answer; every one is counted under exactly one (or replied). In the
 * order they are checked. */
typedef enum UdpDrop {
        UDP_DROP_BAD_SOURCE,      /* port 0, or a source address no reply may go to */
        UDP_DROP_BAD_DESTINATION, /* sent to a broadcast or multicast address */
        UDP_DROP_REFLECTOR_PORT,  /* from the port of a service that answers anything (udp_deny_ports) */
        UDP_DROP_ACL,             /* allow/deny */
        UDP_DROP_TOO_LARGE,       /* above udp_max_size */
        UDP_DROP_SOURCE_RATE,     /* over udp_rate or udp_byte_rate for its source group */
        UDP_DROP_SOURCES_FULL,    /* a new source group while udp_sources groups are all mid-burst */
        UDP_DROP_BUDGET,          /* over udp_budget or udp_byte_budget (the whole service) */
        UDP_DROP_SEND_FAILED,     /* the kernel refused the reply */
        _UDP_DROP_MAX,
} UdpDrop;

/* "bad-source", "bad-destination", "reflector-port", "acl", "too-large", "source-rate",
 * "sources-full", "budget", "send-failed" */
const char *udp_drop_name(int reason);

typedef enum UdpAddrKind {
        UDP_ADDR_ALLOW,
        UDP_ADDR_DENY,
        UDP_ADDR_BROADCAST, /* a local interface's broadcast address */
} UdpAddrKind;

typedef struct UdpLimits {
        double rate, byte_rate;     /* per source group; 0 = none */
        double budget, byte_budget; /* this worker's share of the service's; 0 = none */
        uint32_t burst, byte_burst; /* effective (config_burst()) */
        uint32_t budget_burst, byte_budget_burst;
        uint32_t sources;  /* source groups tracked */
        uint32_t max_size; /* bytes */
        uint8_t prefix_v4, prefix_v6;
        uint8_t deny_ports[65536 / 8]; /* bit p: never answer source port p */
} UdpLimits;

typedef struct UdpSocketMsg {
        uint32_t type;
} UdpSocketMsg;

typedef struct UdpPolicyMsg {
        uint32_t type;
        uint32_t generation; /* echoed back in UDP_MSG_COUNTERS once applied */
        uint32_t n_addrs;    /* UDP_MSG_ADDRS entries that follow */
        UdpLimits limits;
} UdpPolicyMsg;

typedef struct UdpAddrsMsg {
        uint32_t type;
        uint32_t n;
        uint8_t kind[UDP_ADDRS_PER_MSG]; /* UdpAddrKind */
        IpAddr addrs[UDP_ADDRS_PER_MSG];
} UdpAddrsMsg;

typedef struct UdpCommitMsg {
        uint32_t type;
        uint32_t generation;
} UdpCommitMsg;

typedef struct UdpCounters {
        uint32_t type;
        uint32_t generation; /* of the policy in force */
        uint64_t received, replied;
        uint64_t bytes_in, bytes_out;
        uint64_t dropped[_UDP_DROP_MAX];
} UdpCounters;

typedef union UdpMsg {
        uint32_t type;
        UdpSocketMsg socket;
        UdpPolicyMsg policy;
        UdpAddrsMsg addrs;
        UdpCommitMsg commit;
        UdpCounters counters;
} UdpMsg;

/* The UDP worker: reads its socket and policy from the control channel ctl, then answers until
 * the channel ends. Returns an exit status (0 when the master closed the channel). */
int udp_worker_main(int ctl);
