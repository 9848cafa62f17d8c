/* sd_notify(3) messages to the service manager: READY, RELOADING, STOPPING, STATUS.
 * Results are ignored on purpose, as sd_notify(3) recommends: no manager, no message. */
#include "echod/notify.h"

#include <systemd/sd-daemon.h>

#include "shared/timeutil.h"

void notify_ready(const char *status) {
        (void) sd_notifyf(0, "READY=1\nSTATUS=%s", status);
}

void notify_reloading(void) {
        /* MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) pair the reload; 252 ignores it */
        (void) sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu", (unsigned long long) now_usec());
}

void notify_stopping(const char *status) {
        (void) sd_notifyf(0, "STOPPING=1\nSTATUS=%s", status);
}

void notify_status(const char *status) {
        (void) sd_notifyf(0, "STATUS=%s", status);
}
