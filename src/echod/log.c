/* The one logger: journald (structured), syslog(3) or stderr, chosen once at startup. */
#include "echod/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>

#include "shared/io.h"

static LogTarget target = LOG_TARGET_STDERR;
static int max_level = LOG_INFO;
static int startup_fd = -1;

static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

void log_setup(bool to_stderr) {
        if (to_stderr)
                target = LOG_TARGET_STDERR;
        else if (stderr_is_journal())
                target = LOG_TARGET_JOURNAL;
        else {
                target = LOG_TARGET_SYSLOG;
                /* LOG_NDELAY: connect now, before privileges are dropped */
                openlog("echod", LOG_PID | LOG_NDELAY, LOG_DAEMON);
        }
}

LogTarget log_get_target(void) {
        return target;
}

void log_set_max_level(int level) {
        max_level = level;
}

void log_set_startup_fd(int fd) {
        startup_fd = fd;
}

static void log_emit(int level, const char *message_id, const char *msg) {
        switch (target) {
        case LOG_TARGET_JOURNAL:
                if (message_id)
                        sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%i", level, "MESSAGE_ID=%s", message_id,
                                        "SYSLOG_IDENTIFIER=echod", NULL);
                else
                        sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%i", level, "SYSLOG_IDENTIFIER=echod",
                                        NULL);
                break;
        case LOG_TARGET_SYSLOG:
                syslog(level, "%s", msg);
                break;
        case LOG_TARGET_STDERR:
                fprintf(stderr, "%s\n", msg);
                break;
        }
}

int log_full(int level, int error, const char *message_id, const char *fmt, ...) {
        int saved = errno;
        char msg[1024];
        va_list ap;

        if (error < 0)
                error = -error;
        if (level > max_level)
                goto out;

        va_start(ap, fmt);
        int n = vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (error && n >= 0 && (size_t) n < sizeof(msg))
                snprintf(msg + n, sizeof(msg) - (size_t) n, ": %s", strerror(error));

        log_emit(level, message_id, msg);
        if (startup_fd >= 0 && level <= LOG_ERR) {
                (void) write_full(startup_fd, msg, strlen(msg));
                (void) write_full(startup_fd, "\n", 1);
        }
out:
        errno = saved;
        return -error;
}

const char *log_format_peer(const IpAddr *peer, const IpAddr *via, bool proxied, char buf[2 * IPADDR_STR_MAX + 8]) {
        char p[IPADDR_STR_MAX], v[IPADDR_STR_MAX];

        ipaddr_format_endpoint(peer, p);
        if (!proxied)
                snprintf(buf, 2 * IPADDR_STR_MAX + 8, "%s", p);
        else
                snprintf(buf, 2 * IPADDR_STR_MAX + 8, "%s via %s", p, ipaddr_format_endpoint(via, v));
        return buf;
}

void log_connection(const ConnectionRecord *rec) {
        char peer[2 * IPADDR_STR_MAX + 8], host[IPADDR_STR_MAX], local[IPADDR_STR_MAX], via[IPADDR_STR_MAX];
        char msg[512];
        int level = rec->failure ? LOG_WARNING : LOG_INFO;

        if (level > max_level)
                return;
        log_format_peer(&rec->peer, &rec->via, rec->proxied, peer);
        ipaddr_format_endpoint(&rec->local, local);
        snprintf(msg, sizeof(msg),
                 "connection %s closed: %s, %llu bytes in, %llu bytes out, %llu.%03llu s, pid %d", peer,
                 rec->reason, (unsigned long long) rec->bytes_in, (unsigned long long) rec->bytes_out,
                 (unsigned long long) (rec->duration_usec / 1000000),
                 (unsigned long long) (rec->duration_usec / 1000 % 1000), (int) rec->pid);

        if (target != LOG_TARGET_JOURNAL) {
                log_emit(level, NULL, msg);
                return;
        }

        char f[12][IPADDR_STR_MAX + 48], message[sizeof(msg) + 8];
        struct iovec iov[ELEMENTSOF(f) + 1];
        unsigned n = 0;
#define FIELD(...) snprintf(f[n], sizeof(f[n]), __VA_ARGS__), n++
        FIELD("PRIORITY=%i", level);
        FIELD("MESSAGE_ID=%s", MESSAGE_ID_CONNECTION);
        FIELD("SYSLOG_IDENTIFIER=echod");
        FIELD("REMOTE_ADDR=%s", ipaddr_format_host(&rec->peer, host));
        FIELD("REMOTE_PORT=%u", rec->peer.port);
        FIELD("LOCAL_ADDR=%s", local);
        FIELD("CHILD_PID=%d", (int) rec->pid);
        FIELD("BYTES_IN=%llu", (unsigned long long) rec->bytes_in);
        FIELD("BYTES_OUT=%llu", (unsigned long long) rec->bytes_out);
        FIELD("DURATION_USEC=%llu", (unsigned long long) rec->duration_usec);
        FIELD("EXIT_REASON=%s", rec->reason);
        if (rec->proxied)
                FIELD("VIA_ADDR=%s", ipaddr_format_endpoint(&rec->via, via));
#undef FIELD
        /* MESSAGE has its own buffer: it may be longer than a field's */
        snprintf(message, sizeof(message), "MESSAGE=%s", msg);
        iov[0] = (struct iovec) { .iov_base = message, .iov_len = strlen(message) };
        for (unsigned i = 0; i < n; i++)
                iov[i + 1] = (struct iovec) { .iov_base = f[i], .iov_len = strlen(f[i]) };
        sd_journal_sendv(iov, (int) n + 1);
}
