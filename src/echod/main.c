/* echod: command line (sshd conventions), startup order, daemonising, privilege drop. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "build-config.h"
#include "echod/config.h"
#include "echod/daemon.h"
#include "echod/listen.h"
#include "echod/log.h"
#include "echod/manager.h"
#include "echod/privs.h"
#include "shared/macro.h"

/* Exit codes (LSB-ish, as systemd and sysadmins read them). */
#define EXIT_USAGE 2
#define EXIT_NOTCONFIGURED 6

static const char *arg_config = ECHOD_CONFIG_PATH;
static bool arg_foreground = false;
static bool arg_stderr = false;
static bool arg_test = false;
static bool arg_dump = false;

static void help(void) {
        printf("usage: echod [-DetTVh] [-f config_file]\n"
               "\n"
               "TCP echo service (RFC 862): forks one process per connection.\n"
               "\n"
               "  -f FILE  configuration file (default %s)\n"
               "  -D       do not detach (run in the foreground, as under systemd)\n"
               "  -e       log to standard error instead of syslog/journald\n"
               "  -t       test the configuration and exit (0 if valid, 6 if not)\n"
               "  -T       print the effective configuration, defaults included, and exit\n"
               "  -V       print the version and exit\n"
               "  -h       show this help\n"
               "\n"
               "Signals: HUP reloads the configuration, TERM or INT drains and stops.\n"
               "See echod(8) and echod.conf(5).\n",
               ECHOD_CONFIG_PATH);
}

static int parse_argv(int argc, char *argv[]) {
        int c;

        while ((c = getopt(argc, argv, "f:DetTVh")) >= 0)
                switch (c) {
                case 'f':
                        arg_config = optarg;
                        break;
                case 'D':
                        arg_foreground = true;
                        break;
                case 'e':
                        arg_stderr = true;
                        break;
                case 't':
                        arg_test = true;
                        break;
                case 'T':
                        arg_dump = true;
                        break;
                case 'V':
                        printf("echod %s\n", PACKAGE_VERSION);
                        exit(EXIT_SUCCESS);
                case 'h':
                        help();
                        exit(EXIT_SUCCESS);
                default:
                        fprintf(stderr, "Try 'echod -h' for more information.\n");
                        return -EINVAL;
                }
        if (optind < argc) {
                fprintf(stderr, "echod: unexpected argument '%s'\nTry 'echod -h' for more information.\n",
                        argv[optind]);
                return -EINVAL;
        }
        return 0;
}

/* Bind every configured address; on failure nothing stays bound. Logs once. */
static int bind_listeners(const Config *c, Listener ***ret, unsigned *ret_n) {
        ListenAddr addrs[2 * CONFIG_MAX_LISTEN];
        unsigned n = config_listen_addresses(c, addrs, ELEMENTSOF(addrs));
        IpAddr failed = { 0 };
        char a[IPADDR_STR_MAX];
        int r;

        r = listeners_update(NULL, 0, addrs, n, c->backlog, ret, &failed);
        if (r < 0)
                return log_error_errno(r, "Failed to listen on %s", ipaddr_format_endpoint(&failed, a));
        *ret_n = n;
        return 0;
}

static int drop_privileges(const Config *c) {
        int r;

        if (!c->user[0])
                return 0;
        if (geteuid() != 0) {
                log_debug("not running as root, keeping the current user instead of '%s'", c->user);
                return 0;
        }
        r = privileges_drop(c->user, c->group);
        if (r == -ESRCH)
                return log_error("Failed to drop privileges: no such user '%s' or group '%s'", c->user,
                                 c->group[0] ? c->group : "(primary)"), r;
        if (r < 0)
                return log_error_errno(r, "Failed to drop privileges to '%s'", c->user);
        return 0;
}

int main(int argc, char *argv[], char *envp[]) {
        _cleanup_(freep) char *error = NULL;
        Listener **listeners = NULL;
        unsigned n_listeners = 0, rejected = 0;
        Manager *m = NULL;
        Config *config = NULL;
        bool activated;
        int r;

        setproctitle_init(argc, argv, envp);
        if (parse_argv(argc, argv) < 0)
                return EXIT_USAGE;
        if (!arg_foreground && !arg_test && !arg_dump)
                daemon_close_inherited_fds();

        r = config_load(arg_config, &config, &error);
        if (r < 0) {
                fprintf(stderr, "echod: %s\n", error ? error : strerror(-r));
                return EXIT_NOTCONFIGURED;
        }
        if (arg_dump) {
                config_dump(config, stdout);
                config_free(config);
                return EXIT_SUCCESS;
        }
        if (arg_test) {
                printf("configuration OK\n");
                config_free(config);
                return EXIT_SUCCESS;
        }

        log_setup(arg_stderr);
        /* until detached, the operator's terminal is the starting process's stderr: syslog alone
         * (possibly absent) would leave "echod" failing with exit 1 and no word */
        if (!arg_foreground && log_get_target() != LOG_TARGET_STDERR)
                log_set_startup_fd(STDERR_FILENO);

        if (!arg_foreground) {
                r = daemon_lock_pidfile(config->pidfile);
                if (r == -EEXIST) {
                        log_error("Failed to daemonize: %s is locked by another running echod", config->pidfile);
                        goto fail;
                }
                if (r < 0) {
                        log_error_errno(r, "Failed to open %s", config->pidfile);
                        goto fail;
                }
        }

        /* adopt systemd's sockets in the very process systemd started, before any fork */
        r = listeners_adopt(&listeners, &rejected);
        if (r < 0) {
                log_error_errno(r, "Failed to adopt socket-activated listeners");
                goto fail;
        }
        if (rejected > 0)
                log_warning("ignored %u passed file descriptors that are not listening TCP sockets", rejected);
        activated = r > 0;
        if (activated) {
                n_listeners = (unsigned) r;
                for (unsigned i = 0; i < n_listeners; i++)
                        listeners[i]->proxy = config->proxy_protocol;
                log_info("socket-activated: using %u listener(s) passed by systemd, ignoring 'listen'",
                         n_listeners);
        } else if (bind_listeners(config, &listeners, &n_listeners) < 0)
                goto fail;

        if (!arg_foreground) {
                r = daemonize();
                if (r < 0) {
                        log_error_errno(r, "Failed to daemonize");
                        goto fail;
                }
                r = daemon_write_pidfile();
                if (r < 0) {
                        log_error_errno(r, "Failed to write %s", config->pidfile);
                        goto fail;
                }
        }

        if (drop_privileges(config) < 0)
                goto fail;

        r = manager_new(config, listeners, n_listeners, activated, &m);
        if (r < 0) {
                log_error_errno(r, "Failed to set up");
                goto fail;
        }
        config = NULL;
        free(listeners);
        listeners = NULL;

        r = manager_run(m, daemon_ready);
        manager_free(m);
        daemon_remove_pidfile();
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

fail:
        for (unsigned i = 0; i < n_listeners && listeners; i++)
                listener_free(listeners[i]);
        free(listeners);
        config_free(config);
        daemon_remove_pidfile();
        return EXIT_FAILURE;
}
