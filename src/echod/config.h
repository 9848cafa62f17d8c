/* echod.conf: the plain configuration struct and its loader (libconfuse stays inside config.c). */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "shared/ipaddr.h"

#define CONFIG_MAX_CONNECTIONS 262144
#define CONFIG_MAX_LISTEN 32
#define CONFIG_MAX_CIDRS 4096
/* open files the master needs beside its connections and listeners: stdio, the event loop's
 * epoll, signalfds and timers, the control socket and a client or two, each spawner's socket
 * (a retiring one too), the pinned spawner binary (an idle master with UDP has 13) */
#define CONFIG_NOFILE_OWN 32

typedef struct ListenEntry {
        char *text;    /* as written: "0.0.0.0:7", "[::]:7", "*:7", "127.0.0.1:7 proxy" */
        IpAddr addr;   /* for "*", 0.0.0.0 */
        bool wildcard; /* "*:PORT": expands to 0.0.0.0 and [::] */
        bool proxy;    /* " proxy" suffix: this listener requires a PROXY protocol header */
} ListenEntry;

/* One concrete address to listen on, after "*" expansion. */
typedef struct ListenAddr {
        IpAddr addr;
        bool proxy;
        bool datagram; /* a UDP socket (listen_udp) */
} ListenAddr;

typedef enum AtCapacity {
        AT_CAPACITY_REFUSE,
        AT_CAPACITY_QUEUE,
} AtCapacity;

typedef struct CidrList {
        IpAddr *items;
        unsigned n;
} CidrList;

typedef struct ListenList {
        ListenEntry *items;
        unsigned n;
} ListenList;

/* Source ports never answered over UDP, sorted, unique. */
typedef struct PortList {
        uint16_t *items;
        unsigned n;
} PortList;

typedef struct Config {
        char *path;
        ListenList listen;
        ListenList listen_udp;       /* UDP echo: none unless configured */
        unsigned backlog;
        unsigned max_connections;
        unsigned max_per_source;
        unsigned source_prefix_v4;
        unsigned source_prefix_v6;
        AtCapacity at_capacity;
        unsigned queue_timeout;      /* seconds */
        double connection_rate;      /* new connections per second, service-wide; 0 = no limit */
        unsigned connection_burst;   /* 0 = max(1, ceil(rate)) */
        double per_source_rate;      /* per source group; 0 = no limit */
        unsigned per_source_burst;   /* 0 = max(1, ceil(rate)) */
        CidrList allow;              /* empty = all not denied */
        CidrList deny;
        unsigned idle_timeout;       /* seconds, 0 = none */
        unsigned stall_timeout;      /* seconds, 0 = none */
        unsigned max_session;        /* seconds, 0 = none */
        uint64_t max_bytes;          /* echoed bytes per connection, 0 = no limit */
        bool proxy_protocol;         /* every listener requires a PROXY header */
        CidrList proxy_trusted;
        unsigned proxy_timeout;      /* seconds */
        bool sandbox;                /* seccomp allow-list in the children */
        unsigned shutdown_timeout;   /* seconds */
        char *user;                  /* "" = keep the current user */
        char *group;                 /* "" = the user's primary group */
        char *pidfile;               /* "" = none; used only when daemonising */
        char *control_socket;        /* "" = none */
        bool log_connections;
        /* UDP echo (echod.conf(5), UDP ECHO): per source group, for the whole service, bounds */
        double udp_rate;             /* datagrams answered per second per source group */
        unsigned udp_burst;
        double udp_byte_rate;        /* bytes answered per second per source group */
        unsigned udp_byte_burst;
        double udp_budget;           /* datagrams answered per second, all sources together */
        double udp_byte_budget;      /* bytes answered per second, all sources together */
        unsigned udp_sources;        /* source groups tracked at once */
        unsigned udp_max_size;       /* larger datagrams are not answered */
        PortList udp_deny_ports;
        int max_connections_line;    /* where the file sets max_connections; 0 = the default */
} Config;

/* Parse and validate path into a new Config. On failure returns -errno (-EINVAL for a bad file)
 * and, if ret_error is not NULL, a malloc'd message naming "file:line: key: problem". */
int config_load(const char *path, Config **ret, char **ret_error);

Config *config_free(Config *c);
static inline void config_freep(Config **c) {
        config_free(*c);
}

/* Print the effective configuration, defaults included, in a syntax config_load() accepts. */
void config_dump(const Config *c, FILE *f);

/* Listen addresses after "*" expansion, with the PROXY requirement resolved (the global
 * proxy_protocol or the entry's suffix): fills out (up to max), returns the count. */
unsigned config_listen_addresses(const Config *c, ListenAddr *out, unsigned max);
/* The same for listen_udp (never proxy). */
unsigned config_udp_addresses(const Config *c, ListenAddr *out, unsigned max);

/* Open files the master needs for c: one per connection max_connections admits (children.c holds
 * each one's socket until its process is gone), one per listener, and CONFIG_NOFILE_OWN. */
uint64_t config_nofile_need(const Config *c);

/* Whether a master that may have limit open files can hold every connection c admits: 0, or
 * -EMFILE and, if ret_error is not NULL, a malloc'd "file:line: max_connections: N needs M file
 * descriptors; this process may have L (...)". Connections waiting (the queue, PROXY headers) are
 * not counted: without a descriptor they wait in the kernel's backlog instead. */
int config_check_nofile(const Config *c, uint64_t limit, char **ret_error);

/* Effective bursts: the configured one, or max(1, ceil(rate)). */
unsigned config_burst(double rate, unsigned burst);
