/* echod: command line (sshd conventions), startup order, daemonising, privilege drop. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "build-config.h"
#include "echod/config.h"
#include "echod/control.h"
#include "echod/daemon.h"
#include "echod/listen.h"
#include "echod/log.h"
#include "echod/manager.h"
#include "echod/privs.h"
#include "echod/spawner.h"
#include "shared/macro.h"

/* Exit codes (LSB-ish, as systemd and sysadmins read them). */
#define EXIT_USAGE 2
#define EXIT_NOTCONFIGURED 6

static const char *arg_config = ECHOD_CONFIG_PATH;
static bool arg_foreground = false;
static bool arg_stderr = false;
static bool arg_test = false;
static bool arg_dump = false;
static int arg_format = -1; /* StatusFormat, for 'status'; -1: not given (text) */
static const char *arg_command = NULL; /* "status": ask the running echod */

static void help(void) {
        printf("usage: echod [-DetTVh] [-f config_file]\n"
               "       echod [-f config_file] status [--format=text|json|prometheus] [--json]\n"
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
               "  status   ask the running echod what it is doing: --format=text (the default),\n"
               "           json (for scripts; --json is the same) or prometheus (for monitoring)\n"
               "\n"
               "Signals: HUP reloads the configuration, TERM or INT drains and stops.\n"
               "See echod(8) and echod.conf(5).\n",
               ECHOD_CONFIG_PATH);
}

static int parse_argv(int argc, char *argv[]) {
        static const struct option long_options[] = {
                { "json", no_argument, NULL, 'j' },
                { "format", required_argument, NULL, 'F' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                { NULL, 0, NULL, 0 },
        };
        int c;

        while ((c = getopt_long(argc, argv, "f:DetTVh", long_options, NULL)) >= 0)
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
                case 'j':
                        arg_format = STATUS_JSON;
                        break;
                case 'F':
                        arg_format = status_format_from_name(optarg);
                        if (arg_format < 0) {
                                fprintf(stderr, "echod: unknown format '%s' (text, json or prometheus)\n", optarg);
                                return -EINVAL;
                        }
                        break;
                default:
                        fprintf(stderr, "Try 'echod -h' for more information.\n");
                        return -EINVAL;
                }
        if (optind < argc && streq(argv[optind], "status"))
                arg_command = argv[optind++];
        if (optind < argc) {
                fprintf(stderr, "echod: unexpected argument '%s'\nTry 'echod -h' for more information.\n",
                        argv[optind]);
                return -EINVAL;
        }
        if (arg_format >= 0 && !arg_command) {
                fprintf(stderr, "echod: --json and --format go with 'status'\n");
                return -EINVAL;
        }
        return 0;
}

/* Bind every configured address; on failure nothing stays bound. Logs once. */
static int bind_listeners(const Config *c, Listener ***ret, unsigned *ret_n) {
        ListenAddr addrs[4 * CONFIG_MAX_LISTEN];
        unsigned n = config_listen_addresses(c, addrs, ELEMENTSOF(addrs));

        n += config_udp_addresses(c, addrs + n, ELEMENTSOF(addrs) - n);
        ListenerPlan plan = { 0 };
        char a[IPADDR_STR_MAX];
        int r;

        r = listeners_prepare(NULL, 0, addrs, n, c->backlog, &plan);
        if (r < 0)
                return log_error_errno(r, "Failed to listen on %s", ipaddr_format_endpoint(&plan.failed, a));
        *ret = listeners_commit(NULL, 0, &plan);
        *ret_n = n;
        return 0;
}

/* 'echod status': the config names the socket; the daemon answers. */
static int query_status(Config *c) {
        char command[64] = "status"; /* text: the command every echod answers */
        int r;

        if (!c->control_socket[0]) {
                fprintf(stderr, "echod: %s sets no control_socket: nothing to ask\n", c->path);
                config_free(c);
                return EXIT_FAILURE;
        }
        if (arg_format >= 0 && arg_format != STATUS_TEXT)
                snprintf(command, sizeof(command), "status %s", status_format_name(arg_format));
        r = control_query(c->control_socket, command, stdout);
        if (r < 0)
                fprintf(stderr, "echod: cannot ask %s: %s%s\n", c->control_socket, strerror(-r),
                        r == -ENOENT || r == -ECONNREFUSED ? " (is echod running?)" : "");
        config_free(c);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
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

/* The master holds every admitted connection's socket until its process is gone (children.c): the
 * soft limit on open files goes up to the hard one (under systemd, LimitNOFILE= sets both).
 * Returns the limit in force. */
static uint64_t nofile_raise(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return UINT64_MAX; /* cannot tell: let accept's EMFILE back-off deal with it */
        if (rl.rlim_cur < rl.rlim_max) {
                struct rlimit raised = { rl.rlim_max, rl.rlim_max };
                if (setrlimit(RLIMIT_NOFILE, &raised) >= 0)
                        rl.rlim_cur = rl.rlim_max;
        }
        return rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t) rl.rlim_cur;
}

/* Start from known dispositions, once, so no child has to reset 64 of them: all default, but
 * SIGPIPE ignored (a closed peer or log pipe is EPIPE, never death). */
static void reset_signals(void) {
        struct sigaction sa = { .sa_handler = SIG_DFL };

        for (int sig = 1; sig < NSIG; sig++)
                if (sig != SIGKILL && sig != SIGSTOP)
                        (void) sigaction(sig, &sa, NULL);
        sa.sa_handler = SIG_IGN;
        (void) sigaction(SIGPIPE, &sa, NULL);
}

int main(int argc, char *argv[], char *envp[]) {
        _cleanup_(freep) char *error = NULL;
        Listener **listeners = NULL;
        unsigned n_listeners = 0, rejected = 0;
        Manager *m = NULL;
        Config *config = NULL;
        bool activated;
        int control_fd = -1, r;

        setproctitle_init(argc, argv, envp);
        spawner_locate(argv[0]); /* before daemonising moves us to / */
        reset_signals();
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
        /* -t too: ExecStartPre= runs it with the limits ExecStart= gets */
        if (!arg_command && config_check_nofile(config, nofile_raise(), &error) < 0) {
                fprintf(stderr, "echod: %s\n", error ? error : strerror(EMFILE));
                config_free(config);
                return EXIT_NOTCONFIGURED;
        }
        if (arg_test) {
                printf("configuration OK\n");
                config_free(config);
                return EXIT_SUCCESS;
        }
        if (arg_command)
                return query_status(config);

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
                log_warning("ignored %u passed file descriptors that are neither listening TCP nor UDP sockets",
                            rejected);
        activated = r > 0;
        if (activated) {
                n_listeners = (unsigned) r;
                for (unsigned i = 0; i < n_listeners; i++)
                        listeners[i]->proxy = config->proxy_protocol;
                log_info("socket-activated: using %u socket(s) passed by systemd, ignoring 'listen' and "
                         "'listen_udp'",
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

        /* the control socket is made while we may still be root; a failure is not fatal */
        if (config->control_socket[0]) {
                control_fd = control_bind(config->control_socket);
                if (control_fd == -EADDRINUSE)
                        log_warning("another echod answers on %s: running without a control socket",
                                    config->control_socket);
                else if (control_fd < 0)
                        log_warning_errno(control_fd, "Failed to create the control socket %s, running without it",
                                          config->control_socket);
        }

        /* not fatal: the path is tried at the first start, and fails there with its reason */
        (void) spawner_pin();
        if (drop_privileges(config) < 0)
                goto fail;

        /* the manager owns config, listeners and control_fd from here, even if it fails */
        r = manager_new(config, listeners, n_listeners, activated, control_fd, &m);
        control_fd = -1;
        config = NULL;
        n_listeners = 0;
        listeners = NULL;
        if (r < 0) {
                log_error_errno(r, "Failed to set up");
                goto fail;
        }

        r = manager_run(m, daemon_ready);
        manager_free(m);
        daemon_remove_pidfile();
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

fail:
        safe_close(control_fd);
        for (unsigned i = 0; i < n_listeners && listeners; i++)
                listener_free(listeners[i]);
        free(listeners);
        config_free(config);
        daemon_remove_pidfile();
        return EXIT_FAILURE;
}
