/* The master's end of a UDP worker's control channel (udp-proto.h): the messages it sends (the
 * socket, the policy built from the configuration) and how it takes the reports it reads (the
 * worker's word about its own socket, checked before it counts). Sends never block and never log. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "echod/config.h"
#include "echod/udp-proto.h"

typedef struct UdpTotals {
        uint64_t received, replied, bytes_in, bytes_out;
        uint64_t dropped[_UDP_DROP_MAX];
} UdpTotals;

/* UDP_MSG_SOCKET with fd. Returns 0 or -errno. */
int udp_channel_send_socket(int ctl, int fd);
/* The policy c asks for, whole (POLICY, its addresses, COMMIT), as generation; the service's
 * budget is divided by share (the number of UDP sockets). Returns 0 or -errno. */
int udp_channel_send_policy(int ctl, const Config *c, unsigned share, uint32_t generation);
/* A report only grows, field by field, from the last one of the same worker, and answers and
 * drops never outnumber what was received. */
bool udp_report_plausible(const UdpCounters *old, const UdpCounters *new);
/* Add what a worker reported since its last report (old) to t. */
void udp_totals_add(UdpTotals *t, const UdpCounters *old, const UdpCounters *new);
