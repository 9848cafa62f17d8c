/* sd_notify(3) messages to the service manager: READY, RELOADING, STOPPING, STATUS, WATCHDOG.
 * Never blocks for long: see notify.c. */
#pragma once

void notify_ready(const char *status);
void notify_reloading(void);
void notify_stopping(const char *status);
void notify_status(const char *status);
void notify_watchdog(void);
/* At exit: close the socket (the next message would open it again). */
void notify_close(void);
