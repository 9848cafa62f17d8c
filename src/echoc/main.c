/* echoc: the operator's client for echo services (RFC 862) — command line, set-up, dispatch
 * to the stream, ping and load modes over TCP, and ping and load over UDP (--udp). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "build-config.h"
#include "echoc/echoc.h"
#include "echoc/report.h"
#include "echoc/udp.h"
#include "shared/macro.h"
#include "shared/proxy.h"
#include "shared/timeutil.h"

#define SIZE_MAX_PROBE (1u << 20)
#define CONNECTIONS_MAX 100000
#define WINDOW_MAX 65536

volatile sig_atomic_t echoc_interrupted = 0;

static void on_interrupt(int sig) {
        if (echoc_interrupted < 100)
                echoc_interrupted++;
}

static void help(void) {
        printf("Usage: echoc [OPTIONS] HOST [PORT]   verify and measure a TCP or UDP echo service (RFC 862)\n"
               "Modes: stream (default: stdin -> server -> stdout, every byte verified),\n"
               "       ping (-c -i -s -w -q --connect), load (--load).  PORT defaults to 7.\n"
               "  -4, -6                  IPv4 / IPv6 only\n"
               "  -p, --port PORT         port or service name (instead of the PORT argument)\n"
               "  -W, --timeout SECS      connect and echo timeout (default 10; 0 = none)\n"
               "  -c, --count N           ping: stop after N probes (default: until Ctrl-C)\n"
               "  -i, --interval SECS     ping: time between probes (default 1)\n"
               "  -s, --size BYTES        ping/load: payload per probe (default 64)\n"
               "  -w, --deadline SECS     ping: stop after SECS in all\n"
               "  -q, --quiet             ping: only the summary\n"
               "      --connect           ping: a new connection per probe, timed separately\n"
               "      --load              load: --connections N (10) --duration SECS (10)\n"
               "                          --rate R new connections/s (unlimited) --persistent\n"
               "  -J, --json              JSON report (iperf3-shaped) on stdout\n"
               "      --nagios            monitoring-plugin line and exit codes 0/1/2/3\n"
               "      --warning-rtt MS --critical-rtt MS --warning-loss PCT --critical-loss PCT\n"
               "      --proxy v1|v2       send a PROXY protocol header first\n"
               "      --proxy-source ADDR:PORT  the client it claims (default: our address)\n"
               "  -v, --verbose           stream: a summary on stderr\n"
               "  -u, --udp               UDP: ping, or --load (--rate datagrams/s, --window N outstanding, 64)\n"
               "  -h, --help   -V, --version\n"
               "Stream mode writes only verified bytes. --json/--nagios replace the echoed data.\n"
               "Exit: 0 all echoed intact; 1 mismatch, loss or short echo; 2 usage or connection error.\n");
}

enum {
        ARG_CONNECT = 0x100,
        ARG_LOAD,
        ARG_CONNECTIONS,
        ARG_DURATION,
        ARG_RATE,
        ARG_PERSISTENT,
        ARG_NAGIOS,
        ARG_WARNING_RTT,
        ARG_CRITICAL_RTT,
        ARG_WARNING_LOSS,
        ARG_CRITICAL_LOSS,
        ARG_PROXY,
        ARG_PROXY_SOURCE,
        ARG_WINDOW,
};

static const struct option options[] = {
        { "port", required_argument, NULL, 'p' },
        { "timeout", required_argument, NULL, 'W' },
        { "count", required_argument, NULL, 'c' },
        { "interval", required_argument, NULL, 'i' },
        { "size", required_argument, NULL, 's' },
        { "deadline", required_argument, NULL, 'w' },
        { "quiet", no_argument, NULL, 'q' },
        { "connect", no_argument, NULL, ARG_CONNECT },
        { "load", no_argument, NULL, ARG_LOAD },
        { "connections", required_argument, NULL, ARG_CONNECTIONS },
        { "duration", required_argument, NULL, ARG_DURATION },
        { "rate", required_argument, NULL, ARG_RATE },
        { "persistent", no_argument, NULL, ARG_PERSISTENT },
        { "json", no_argument, NULL, 'J' },
        { "nagios", no_argument, NULL, ARG_NAGIOS },
        { "warning-rtt", required_argument, NULL, ARG_WARNING_RTT },
        { "critical-rtt", required_argument, NULL, ARG_CRITICAL_RTT },
        { "warning-loss", required_argument, NULL, ARG_WARNING_LOSS },
        { "critical-loss", required_argument, NULL, ARG_CRITICAL_LOSS },
        { "proxy", required_argument, NULL, ARG_PROXY },
        { "proxy-source", required_argument, NULL, ARG_PROXY_SOURCE },
        { "verbose", no_argument, NULL, 'v' },
        { "udp", no_argument, NULL, 'u' },
        { "window", required_argument, NULL, ARG_WINDOW },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
};

/* "1.5", "250ms", "2s", "1m": seconds as a real number with an optional unit. */
static int parse_seconds(const char *s, uint64_t *ret) {
        char *end;
        double v, unit = 1e6;

        errno = 0;
        v = strtod(s, &end);
        if (errno != 0 || end == s || !isfinite(v) || v < 0)
                return -EINVAL;
        if (streq(end, "ms"))
                unit = 1e3;
        else if (streq(end, "m"))
                unit = 60e6;
        else if (streq(end, "h"))
                unit = 3600e6;
        else if (!streq(end, "") && !streq(end, "s"))
                return -EINVAL;
        if (v * unit > 1e15)
                return -ERANGE;
        *ret = (uint64_t) llround(v * unit);
        return 0;
}

static int parse_real(const char *s, double max, double *ret) {
        char *end;

        errno = 0;
        double v = strtod(s, &end);
        if (errno != 0 || end == s || *end || !isfinite(v) || v < 0 || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

static int parse_port(const char *s) {
        const char *err = NULL;

        if (strspn(s, "0123456789") == strlen(s)) {
                (void) strtonum(s, 1, 65535, &err);
                return err ? -ERANGE : 0;
        }
        return s[0] ? 0 : -EINVAL; /* a service name; getaddrinfo decides */
}

typedef struct Parsed {
        Options o;
        bool ping_opt, load_opt, size_set, count_set, interval_set, timeout_set, window_set;
        const char *tcp_only; /* the last option given that only TCP has */
} Parsed;

/* What --udp changes: no stream mode and no TCP-only options, the size must hold the probe
 * header and fit a datagram, and the timeout is the reply timeout (default 1 s, never none). */
static int check_udp(Parsed *p) {
        Options *o = &p->o;

        if (p->tcp_only) {
                report_error("%s is for TCP only; it does not combine with --udp", p->tcp_only);
                return -EINVAL;
        }
        if (o->size < UDP_HEADER_SIZE || o->size > UDP_PAYLOAD_MAX) {
                report_error("with --udp, -s must be %u to %u bytes (the probe header is %u)", UDP_HEADER_SIZE,
                             UDP_PAYLOAD_MAX, UDP_HEADER_SIZE);
                return -EINVAL;
        }
        if (!p->timeout_set)
                o->timeout_usec = USEC_PER_SEC;
        else if (o->timeout_usec == 0) {
                report_error("with --udp, -W must be more than 0: a datagram's reply may never come");
                return -EINVAL;
        }
        return 0;
}

/* Returns 0, 1 (help or version printed: exit 0), or -EINVAL after printing the problem. */
static int parse_argv(int argc, char **argv, Parsed *p) {
        Options *o = &p->o;
        const char *err = NULL;
        uint64_t *sec = NULL;
        int c, r;

        int li = -1;
        while ((c = getopt_long(argc, argv, "46p:W:c:i:s:w:qJvuhV", options, &li)) >= 0) {
                char name[32];

                if (li >= 0)
                        snprintf(name, sizeof(name), "--%s", options[li].name);
                else
                        snprintf(name, sizeof(name), "-%c", c);
                li = -1;
                err = NULL;
                sec = NULL;
                switch (c) {
                case '4':
                        o->family = AF_INET;
                        break;
                case '6':
                        o->family = AF_INET6;
                        break;
                case 'p':
                        o->port = optarg;
                        if (parse_port(optarg) < 0)
                                err = "invalid port";
                        break;
                case 'W':
                        sec = &o->timeout_usec;
                        p->timeout_set = true;
                        break;
                case 'c':
                        o->count = (uint64_t) strtonum(optarg, 1, INT64_MAX, &err);
                        p->ping_opt = p->count_set = true;
                        break;
                case 'i':
                        sec = &o->interval_usec;
                        p->ping_opt = p->interval_set = true;
                        break;
                case 's':
                        o->size = (size_t) strtonum(optarg, 1, SIZE_MAX_PROBE, &err);
                        p->size_set = true;
                        break;
                case 'w':
                        sec = &o->deadline_usec;
                        p->ping_opt = true;
                        break;
                case 'q':
                        o->quiet = p->ping_opt = true;
                        break;
                case ARG_CONNECT:
                        o->connect_per_probe = p->ping_opt = true;
                        p->tcp_only = "--connect";
                        break;
                case ARG_LOAD:
                        p->load_opt = true;
                        break;
                case ARG_CONNECTIONS:
                        o->connections = (unsigned) strtonum(optarg, 1, CONNECTIONS_MAX, &err);
                        p->load_opt = true;
                        p->tcp_only = "--connections";
                        break;
                case ARG_DURATION:
                        sec = &o->duration_usec;
                        p->load_opt = true;
                        break;
                case ARG_RATE:
                        o->rate = streq(optarg, "unlimited") ? 0 : (uint64_t) strtonum(optarg, 0, 10000000, &err);
                        p->load_opt = true;
                        break;
                case ARG_PERSISTENT:
                        o->persistent = p->load_opt = true;
                        p->tcp_only = "--persistent";
                        break;
                case ARG_WINDOW:
                        o->window = (unsigned) strtonum(optarg, 1, WINDOW_MAX, &err);
                        p->load_opt = p->window_set = true;
                        break;
                case 'u':
                        o->udp = true;
                        break;
                case 'J':
                        o->output = OUTPUT_JSON;
                        break;
                case ARG_NAGIOS:
                        o->output = OUTPUT_NAGIOS;
                        break;
                case ARG_WARNING_RTT:
                case ARG_CRITICAL_RTT:
                case ARG_WARNING_LOSS:
                case ARG_CRITICAL_LOSS: {
                        double *t = c == ARG_WARNING_RTT    ? &o->warning_rtt_ms
                                    : c == ARG_CRITICAL_RTT ? &o->critical_rtt_ms
                                    : c == ARG_WARNING_LOSS ? &o->warning_loss
                                                            : &o->critical_loss;
                        bool loss = c == ARG_WARNING_LOSS || c == ARG_CRITICAL_LOSS;
                        if (parse_real(optarg, loss ? 100 : 1e9, t) < 0)
                                err = "invalid threshold";
                        break;
                }
                case ARG_PROXY:
                        o->proxy_version = streq(optarg, "v1") || streq(optarg, "1") ? 1
                                           : streq(optarg, "v2") || streq(optarg, "2") ? 2
                                                                                        : 0;
                        if (o->proxy_version == 0)
                                err = "must be v1 or v2";
                        p->tcp_only = "--proxy";
                        break;
                case ARG_PROXY_SOURCE: {
                        bool wildcard = false;
                        if (ipaddr_parse_endpoint(optarg, &o->proxy_source, &wildcard) < 0 || wildcard)
                                err = "must be ADDR:PORT, e.g. 203.0.113.7:51234 or [2001:db8::7]:51234";
                        o->proxy_source_set = true;
                        p->tcp_only = "--proxy-source";
                        break;
                }
                case 'v':
                        o->verbose = true;
                        p->tcp_only = "--verbose";
                        break;
                case 'h':
                        help();
                        return 1;
                case 'V':
                        printf("echoc %s\n", PACKAGE_VERSION);
                        return 1;
                default:
                        return -EINVAL; /* getopt printed the problem */
                }
                if (sec && parse_seconds(optarg, sec) < 0)
                        err = "invalid time (seconds, or with a unit: 250ms, 2s, 1m)";
                if (err) {
                        report_error("option %s '%s': %s", name, optarg, err);
                        return -EINVAL;
                }
        }

        if (optind >= argc) {
                report_error("missing HOST");
                return -EINVAL;
        }
        o->host = argv[optind++];
        if (optind < argc) {
                o->port = argv[optind++];
                if (parse_port(o->port) < 0) {
                        report_error("invalid port '%s'", o->port);
                        return -EINVAL;
                }
        }
        if (optind < argc) {
                report_error("unexpected argument '%s'", argv[optind]);
                return -EINVAL;
        }

        if (p->load_opt && p->ping_opt) {
                report_error("--load does not combine with the ping options (-c -i -w -q --connect)");
                return -EINVAL;
        }
        if (o->proxy_source_set && o->proxy_version == 0) {
                report_error("--proxy-source needs --proxy v1|v2");
                return -EINVAL;
        }
        if (o->udp) {
                r = check_udp(p);
                if (r < 0)
                        return r;
        } else if (p->window_set) {
                report_error("--window is for UDP load (--udp --load); TCP load has --connections");
                return -EINVAL;
        }
        o->mode = p->load_opt                                                                  ? MODE_LOAD
                  : o->udp || p->ping_opt || p->size_set || o->output == OUTPUT_NAGIOS ? MODE_PING
                                                                                       : MODE_STREAM;
        if (o->mode == MODE_PING && o->output == OUTPUT_NAGIOS) {
                /* a check must end by itself */
                if (!p->count_set && o->deadline_usec == 0)
                        o->count = 5;
                if (!p->interval_set)
                        o->interval_usec = USEC_PER_SEC / 5;
        }
        return 0;
}

int session_connect(Session *s) {
        char buf[IPADDR_STR_MAX];
        size_t len = 0;
        int r = -EHOSTUNREACH;

        s->error[0] = 0;
        for (size_t i = 0; i < s->target.n_addrs; i++) {
                const IpAddr *a = &s->target.addrs[i];

                /* UDP: connect() sends nothing; it fails only where there is no route */
                r = s->opts->udp ? net_udp_connect(a) : net_connect(a, s->opts->timeout_usec);
                if (r >= 0) {
                        (void) net_endpoints(r, &s->local, &s->remote);
                        s->connected = true;
                        s->error[0] = 0;
                        return r;
                }
                if (len < sizeof(s->error))
                        len += (size_t) snprintf(s->error + len, sizeof(s->error) - len, "%s%s %s: %s",
                                                 len > 0 ? "; " : "", s->opts->udp ? "UDP socket for" : "connect to",
                                                 ipaddr_format_endpoint(&s->target.addrs[i], buf), strerror(-r));
                if (r == -EINTR)
                        break;
        }
        return r;
}

int session_proxy_header(const Session *s, int fd, uint8_t *buf, size_t size) {
        IpAddr local, remote;
        int r;

        if (s->opts->proxy_version == 0)
                return 0;
        r = net_endpoints(fd, &local, &remote);
        if (r < 0)
                return r;
        return (int) proxy_encode_header(s->opts->proxy_version, s->opts->proxy_source_set ? &s->opts->proxy_source : &local,
                                         &remote, buf, size);
}

int main(int argc, char **argv) {
        Parsed p = {
                .o = {
                        .family = AF_UNSPEC,
                        .port = "7",
                        .timeout_usec = 10 * USEC_PER_SEC,
                        .interval_usec = USEC_PER_SEC,
                        .size = 64,
                        .connections = 10,
                        .duration_usec = 10 * USEC_PER_SEC,
                        .window = 64,
                        .warning_rtt_ms = NAN,
                        .critical_rtt_ms = NAN,
                        .warning_loss = NAN,
                        .critical_loss = NAN,
                },
        };
        bool nagios = false;
        Session s = { .opts = &p.o };
        int r, gai;

        for (int i = 1; i < argc; i++)
                nagios = nagios || streq(argv[i], "--nagios");

        r = parse_argv(argc, argv, &p);
        if (r != 0) {
                if (r < 0)
                        fprintf(stderr, "Try 'echoc --help'.\n");
                if (r < 0 && nagios)
                        printf("ECHO UNKNOWN - invalid command line (see echoc --help)\n");
                return nagios ? NAGIOS_UNKNOWN : r > 0 ? EXIT_INTACT : EXIT_ERROR;
        }

        s.start_wall_usec = clock_usec(CLOCK_REALTIME);
        r = net_resolve(p.o.host, p.o.port, p.o.family, p.o.udp, &s.target, &gai);
        if (r < 0) {
                snprintf(s.error, sizeof(s.error), "cannot resolve %s port %s: %s", p.o.host, p.o.port,
                         gai == EAI_SYSTEM ? strerror(-r) : gai_strerror(gai));
                return report_failure(&s, EXIT_ERROR);
        }

        if (p.o.mode != MODE_STREAM) {
                struct sigaction sa = { .sa_handler = on_interrupt };
                (void) sigaction(SIGINT, &sa, NULL);
                (void) sigaction(SIGTERM, &sa, NULL);
        }

        switch (p.o.mode) {
        case MODE_PING:
                return p.o.udp ? udp_ping_run(&s) : ping_run(&s);
        case MODE_LOAD:
                return p.o.udp ? udp_load_run(&s) : load_run(&s);
        default:
                return stream_run(&s);
        }
}
