/* Refusals: counters by reason, a log line when a window opens, a summary when it closes. */
#include "echod/refusals.h"

#include <errno.h>
#include <stdlib.h>

#include "echod/log.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

#define REFUSAL_WINDOW_USEC (10 * USEC_PER_SEC)

struct Refusals {
        sd_event *event;
        sd_event_source *timer;
        uint64_t count[_REFUSE_MAX];
        RefusalWindow windows[_REFUSE_MAX];
        RefusalTop top;
};

int refusals_new(sd_event *event, Refusals **ret) {
        Refusals *r = calloc(1, sizeof(Refusals));

        if (!r)
                return -ENOMEM;
        r->event = sd_event_ref(event);
        *ret = r;
        return 0;
}

Refusals *refusals_free(Refusals *r) {
        if (r) {
                sd_event_source_disable_unref(r->timer);
                sd_event_unref(r->event);
                free(r);
        }
        return NULL;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Refusals *r = userdata;
        uint64_t now = now_usec();
        bool open = false;

        for (int i = 1; i < _REFUSE_MAX; i++) {
                RefusalSummary sum;
                char src[IPADDR_STR_MAX];
                if (refusal_window_flush(&r->windows[i], (Refusal) i, now, REFUSAL_WINDOW_USEC, &sum))
                        log_full(LOG_WARNING, 0, MESSAGE_ID_REFUSED,
                                 "refused %llu more connections in %llu s: %s (most from %s: %llu)",
                                 (unsigned long long) sum.count,
                                 (unsigned long long) (sum.window_usec / USEC_PER_SEC), refusal_name(sum.reason),
                                 ipaddr_format_prefix(&sum.top_source, src), (unsigned long long) sum.top_count);
                open = open || r->windows[i].start_usec != 0;
        }
        if (!open)
                return 0; /* a oneshot: it stays off until the next refusal */
        (void) sd_event_source_set_time(s, usec + REFUSAL_WINDOW_USEC);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

void refusals_note(Refusals *r, Refusal reason, const IpAddr *peer, const IpAddr *via, bool proxied,
                   const IpAddr *source, const char *detail, int error) {
        char name[2 * IPADDR_STR_MAX + 8];
        /* summaries group by the source key; before admission there is none yet */
        IpAddr group = source && source->family ? *source : *peer;

        if (!source || !source->family)
                ipaddr_mask(&group, group.family == AF_INET ? 32 : 128);
        r->count[reason]++;
        refusal_top_note(&r->top, &group);
        if (!refusal_window_note(&r->windows[reason], &group, now_usec()))
                return;
        log_format_peer(peer, via, proxied, name);
        if (error)
                log_full(LOG_ERR, error, MESSAGE_ID_REFUSED, "refused connection from %s: %s", name,
                         refusal_name(reason));
        else
                log_full(LOG_WARNING, 0, MESSAGE_ID_REFUSED, "refused connection from %s: %s (%s)", name,
                         refusal_name(reason), detail ? detail : "?");

        if (!r->timer)
                (void) sd_event_add_time_relative(r->event, &r->timer, CLOCK_MONOTONIC, REFUSAL_WINDOW_USEC,
                                                  USEC_PER_SEC / 10, on_timer, r);
        else if (sd_event_source_get_enabled(r->timer, NULL) == 0) {
                (void) sd_event_source_set_time_relative(r->timer, REFUSAL_WINDOW_USEC);
                (void) sd_event_source_set_enabled(r->timer, SD_EVENT_ONESHOT);
        }
}

const uint64_t *refusals_counts(const Refusals *r) {
        return r->count;
}

uint64_t refusals_total(const Refusals *r) {
        uint64_t n = 0;

        for (int i = 1; i < _REFUSE_MAX; i++)
                n += r->count[i];
        return n;
}

void refusals_top(const Refusals *r, RefusalTop *ret) {
        *ret = r->top;
        refusal_top_sort(ret);
}
