/* Refusals: counted by reason, logged once, then summarised per window — never a line each.
 *
 * Owns the refusal counters, the per-reason windows and the top refused sources (admit.h has the
 * pure parts). This is the decision point that logs a refusal; the callers only say what and why. */
#pragma once

#include <stdint.h>
#include <systemd/sd-event.h>

#include "echod/admit.h"

typedef struct Refusals Refusals;

int refusals_new(sd_event *event, Refusals **ret);
Refusals *refusals_free(Refusals *r);

/* Count a refusal of peer (via, if proxied) grouped under source (a zero family: the peer's own
 * address); log it if it opens its window, else it goes into the window's summary. detail says why
 * ("max_connections=4 reached"); error, if not 0, is logged instead. */
void refusals_note(Refusals *r, Refusal reason, const IpAddr *peer, const IpAddr *via, bool proxied,
                   const IpAddr *source, const char *detail, int error);

const uint64_t *refusals_counts(const Refusals *r); /* _REFUSE_MAX entries; [0] unused */
uint64_t refusals_total(const Refusals *r);
/* The most refused sources, sorted, largest first. */
void refusals_top(const Refusals *r, RefusalTop *ret);
