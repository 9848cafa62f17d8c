/* echod.conf: the plain configuration struct and its loader (libconfuse stays inside config.c). */
#pragma once

#include <stdbool.h>
#include <stdio.h>

#include "shared/ipaddr.h"

#define CONFIG_MAX_CONNECTIONS 65536

typedef struct ListenEntry {
        char *text;    /* as written: "0.0.0.0:7", "[::]:7", "*:7" */
        IpAddr addr;   /* for "*", 0.0.0.0 */
        bool wildcard; /* "*:PORT": expands to 0.0.0.0 and [::] */
} ListenEntry;

typedef struct Config {
        char *path;
        ListenEntry *listen;
        unsigned n_listen;
        unsigned backlog;
        unsigned max_connections;
        unsigned max_per_source;
        unsigned source_prefix_v4;
        unsigned source_prefix_v6;
        unsigned idle_timeout;     /* seconds, 0 = none */
        unsigned shutdown_timeout; /* seconds */
        char *user;                /* "" = keep the current user */
        char *group;               /* "" = the user's primary group */
        char *pidfile;             /* "" = none; used only when daemonising */
        bool log_connections;
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

/* Listen addresses after "*" expansion: fills out (up to max), returns the count. */
unsigned config_listen_addresses(const Config *c, IpAddr *out, unsigned max);
