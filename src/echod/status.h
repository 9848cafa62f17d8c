/* The status report: a snapshot of what echod is doing, for humans (aligned text) and scripts
 * (JSON).
 *
 * Built from const views of the modules that own the numbers (children, accept, spawner), taken
 * at once into a snapshot, then formatted: text and JSON always come from the same numbers. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "echod/accept.h"
#include "echod/children.h"
#include "echod/config.h"
#include "echod/spawner.h"

typedef enum StatusFormat {
        STATUS_TEXT,
        STATUS_JSON,
} StatusFormat;

typedef struct StatusSources {
        const Config *config;
        const Children *children;
        const Accept *accept;
        const Spawner *spawner;
        uint64_t started_realtime, started_monotonic, loaded_realtime;
        unsigned reloads;
} StatusSources;

/* The report in a malloc'd buffer; the text form lists at most max_live connections. */
int status_report(const StatusSources *src, StatusFormat format, unsigned max_live, char **ret, size_t *ret_len);

/* The one-line summary for STATUS= (systemctl status): active, queued, totals, refusals by reason,
 * listeners. */
void status_summary(const StatusSources *src, char *buf, size_t size);
