/* The one logger: journald (structured), syslog(3) or stderr, chosen once at startup. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <syslog.h>

#include "shared/ipaddr.h"
#include "shared/macro.h"

typedef enum LogTarget {
        LOG_TARGET_STDERR,
        LOG_TARGET_SYSLOG,
        LOG_TARGET_JOURNAL,
} LogTarget;

/* Stable MESSAGE_IDs (journalctl MESSAGE_ID=...). */
#define MESSAGE_ID_STARTED "8a3e1c2f6b7d4e09a1c5d2b3f4e6a701"
#define MESSAGE_ID_STOPPED "8a3e1c2f6b7d4e09a1c5d2b3f4e6a702"
#define MESSAGE_ID_RELOADED "8a3e1c2f6b7d4e09a1c5d2b3f4e6a703"
#define MESSAGE_ID_RELOAD_FAILED "8a3e1c2f6b7d4e09a1c5d2b3f4e6a704"
#define MESSAGE_ID_CONNECTION "8a3e1c2f6b7d4e09a1c5d2b3f4e6a705"
#define MESSAGE_ID_REFUSED "8a3e1c2f6b7d4e09a1c5d2b3f4e6a706"
#define MESSAGE_ID_LISTENING "8a3e1c2f6b7d4e09a1c5d2b3f4e6a707"

/* stderr if asked; journald if stderr is the journal stream ($JOURNAL_STREAM); syslog otherwise. */
void log_setup(bool to_stderr);
LogTarget log_get_target(void);
void log_set_max_level(int level);

/* While daemonising: also copy errors to this fd so the starting process can print them. */
void log_set_startup_fd(int fd);

/* Logs once; returns -abs(error) (0 if error is 0) so callers can "return log_...(r, ...)".
 * A non-zero error appends ": <strerror>" to the message (OpenBSD log_warn style). */
_printf_(4, 5) int log_full(int level, int error, const char *message_id, const char *fmt, ...);

#define log_error_errno(e, ...) log_full(LOG_ERR, (e), NULL, __VA_ARGS__)
#define log_warning_errno(e, ...) log_full(LOG_WARNING, (e), NULL, __VA_ARGS__)
#define log_error(...) log_full(LOG_ERR, 0, NULL, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, 0, NULL, __VA_ARGS__)
#define log_notice(...) log_full(LOG_NOTICE, 0, NULL, __VA_ARGS__)
#define log_info(...) log_full(LOG_INFO, 0, NULL, __VA_ARGS__)
#define log_debug(...) log_full(LOG_DEBUG, 0, NULL, __VA_ARGS__)

typedef struct ConnectionRecord {
        IpAddr peer;
        IpAddr via;   /* the PROXY protocol sender, if proxied */
        bool proxied;
        IpAddr local;
        pid_t pid;
        uint64_t duration_usec;
        uint64_t bytes_in;
        uint64_t bytes_out;
        const char *reason; /* "clean", "idle-timeout", "killed-by-SIGKILL", ... */
        bool failure;       /* logged at warning level */
} ConnectionRecord;

/* "203.0.113.7:5555" or "203.0.113.7:5555 via 127.0.0.1:40000": how peers are named in logs. */
const char *log_format_peer(const IpAddr *peer, const IpAddr *via, bool proxied, char buf[2 * IPADDR_STR_MAX + 8]);

/* The per-connection record: one line (or journal entry with fields) when a connection ends. */
void log_connection(const ConnectionRecord *rec);
