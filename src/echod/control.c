/* The control socket: 'echod status' asks the running master over AF_UNIX.
 *
 * The master serves it from its event loop and never blocks on it: a client has a few seconds
 * to send one command line; the answer is written as the socket accepts it; only a few clients
 * are served at once. Access is the socket's file mode (0600: the user echod runs as, and root). */
#include "echod/control.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "echod/log.h"
#include "shared/io.h"
#include "shared/macro.h"
#include "shared/timeutil.h"

#define CONTROL_CLIENTS_MAX 8
#define CONTROL_TIMEOUT_USEC (5 * USEC_PER_SEC)
#define COMMAND_MAX 64
#define CONTROL_PAUSE_USEC (100 * USEC_PER_MSEC)

struct Control {
        sd_event *event;
        int fd;
        sd_event_source *source, *pause;
        ControlReport report;
        void *userdata;
        unsigned n_clients;
        struct ControlClient *clients;
};

typedef struct ControlClient {
        Control *control;
        int fd;
        char command[COMMAND_MAX];
        size_t command_len;
        char *answer;
        size_t answer_len, sent;
        sd_event_source *io, *timer;
        struct ControlClient *prev, *next;
} ControlClient;

static socklen_t unix_address(const char *path, struct sockaddr_un *sa) {
        *sa = (struct sockaddr_un) { .sun_family = AF_UNIX };
        strncpy(sa->sun_path, path, sizeof(sa->sun_path) - 1);
        return (socklen_t) (offsetof(struct sockaddr_un, sun_path) + strlen(sa->sun_path) + 1);
}

static int unix_connect(const char *path) {
        struct sockaddr_un sa;
        socklen_t len = unix_address(path, &sa);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0)
                return negative_errno();
        if (connect(fd, (struct sockaddr *) &sa, len) < 0) {
                int r = negative_errno();
                close(fd);
                return r;
        }
        return fd;
}

int control_bind(const char *path) {
        _cleanup_(closep) int fd = -1;
        struct sockaddr_un sa;
        socklen_t len = unix_address(path, &sa);
        char dir[sizeof(sa.sun_path)];
        char *slash;
        struct stat st;

        snprintf(dir, sizeof(dir), "%s", path);
        slash = strrchr(dir, '/');
        if (slash && slash != dir) {
                *slash = 0;
                if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                        return negative_errno();
        }
        if (lstat(path, &st) == 0) {
                if (!S_ISSOCK(st.st_mode))
                        return -EEXIST;
                int other = unix_connect(path);
                if (other >= 0) {
                        close(other);
                        return -EADDRINUSE; /* another echod answers there */
                }
                (void) unlink(path); /* stale: its echod is gone */
        }
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return negative_errno();
        mode_t old = umask(0177); /* owner only, from the start */
        int r = bind(fd, (struct sockaddr *) &sa, len);
        umask(old);
        if (r < 0)
                return negative_errno();
        if (listen(fd, 16) < 0)
                return negative_errno();
        return TAKE_FD(fd);
}

static void client_free(ControlClient *c) {
        c->control->n_clients--;
        if (c->prev)
                c->prev->next = c->next;
        else
                c->control->clients = c->next;
        if (c->next)
                c->next->prev = c->prev;
        sd_event_source_disable_unref(c->io);
        sd_event_source_disable_unref(c->timer);
        safe_close(c->fd);
        free(c->answer);
        free(c);
}

static int answer(ControlClient *c) {
        int format = -EINVAL;

        c->command[strcspn(c->command, "\r\n")] = 0;
        if (streq(c->command, "status"))
                format = STATUS_TEXT;
        else if (strncmp(c->command, "status ", strlen("status ")) == 0)
                format = status_format_from_name(c->command + strlen("status "));
        if (format < 0) {
                c->answer = strdup("error: unknown command (try 'status', 'status json' or 'status prometheus')\n");
                c->answer_len = c->answer ? strlen(c->answer) : 0;
                return c->answer ? 0 : -ENOMEM;
        }
        return c->control->report(c->control->userdata, format, &c->answer, &c->answer_len);
}

static int on_client_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        ControlClient *c = userdata;
        ssize_t n;

        if (!c->answer) {
                n = read(fd, c->command + c->command_len, sizeof(c->command) - 1 - c->command_len);
                if (n < 0 && (errno == EAGAIN || errno == EINTR))
                        return 0;
                if (n <= 0) {
                        client_free(c);
                        return 0;
                }
                c->command_len += (size_t) n;
                c->command[c->command_len] = 0;
                if (!strchr(c->command, '\n') && c->command_len < sizeof(c->command) - 1)
                        return 0;
                if (answer(c) < 0) {
                        client_free(c);
                        return 0;
                }
                (void) sd_event_source_set_io_events(s, EPOLLOUT);
        }
        while (c->sent < c->answer_len) {
                n = send(fd, c->answer + c->sent, c->answer_len - c->sent, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0 && (errno == EAGAIN || errno == EINTR))
                        return 0; /* the rest when the socket drains */
                if (n <= 0)
                        break;
                c->sent += (size_t) n;
        }
        client_free(c);
        return 0;
}

static int on_client_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        client_free(userdata);
        return 0;
}

static int on_pause_over(sd_event_source *s, uint64_t usec, void *userdata) {
        Control *ctl = userdata;

        ctl->pause = sd_event_source_unref(ctl->pause);
        return sd_event_source_set_enabled(ctl->source, SD_EVENT_ON);
}

static int on_control_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Control *ctl = userdata;
        ControlClient *c;
        int cfd, r;

        cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (cfd < 0) {
                /* out of fds: the socket stays readable; pause instead of spinning on it */
                if (errno != EAGAIN && errno != EINTR && !ctl->pause &&
                    sd_event_add_time_relative(ctl->event, &ctl->pause, CLOCK_MONOTONIC, CONTROL_PAUSE_USEC, 0,
                                               on_pause_over, ctl) >= 0)
                        (void) sd_event_source_set_enabled(ctl->source, SD_EVENT_OFF);
                return 0;
        }
        if (ctl->n_clients >= CONTROL_CLIENTS_MAX || !(c = calloc(1, sizeof(ControlClient)))) {
                close(cfd);
                return 0;
        }
        *c = (ControlClient) { .control = ctl, .fd = cfd, .next = ctl->clients };
        if (ctl->clients)
                ctl->clients->prev = c;
        ctl->clients = c;
        ctl->n_clients++;
        r = sd_event_add_io(ctl->event, &c->io, cfd, EPOLLIN, on_client_io, c);
        if (r >= 0)
                r = sd_event_add_time_relative(ctl->event, &c->timer, CLOCK_MONOTONIC, CONTROL_TIMEOUT_USEC, 0,
                                               on_client_timeout, c);
        if (r < 0)
                client_free(c);
        return 0;
}

int control_new(sd_event *event, int fd, ControlReport report, void *userdata, Control **ret) {
        Control *c = calloc(1, sizeof(Control));
        int r;

        if (!c) {
                safe_close(fd);
                return -ENOMEM;
        }
        *c = (Control) { .event = sd_event_ref(event), .fd = fd, .report = report, .userdata = userdata };
        r = sd_event_add_io(event, &c->source, fd, EPOLLIN, on_control_accept, c);
        if (r < 0) {
                control_free(c);
                return r;
        }
        *ret = c;
        return 0;
}

Control *control_free(Control *c) {
        if (!c)
                return NULL;
        while (c->clients)
                client_free(c->clients);
        c->source = sd_event_source_disable_unref(c->source);
        c->pause = sd_event_source_disable_unref(c->pause);
        c->fd = safe_close(c->fd);
        sd_event_unref(c->event);
        free(c);
        return NULL;
}

int control_query(const char *path, const char *command, FILE *out) {
        _cleanup_(closep) int fd = unix_connect(path);
        char buf[65536];
        ssize_t n;
        int r;

        if (fd < 0)
                return fd;
        r = write_full(fd, command, strlen(command));
        if (r >= 0)
                r = write_full(fd, "\n", 1);
        if (r < 0)
                return r;
        while ((n = read(fd, buf, sizeof(buf))) != 0) {
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (fwrite(buf, 1, (size_t) n, out) != (size_t) n)
                        return -EIO;
        }
        return 0;
}
