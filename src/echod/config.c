/* echod.conf: libconfuse parsing into a plain Config, validation with exact file:line errors.
 * libconfuse sees a comment-free text (config-text.c), so its line numbers are exact. The parser
 * is not reentrant; echod parses only from its single-threaded master. */
#include "echod/config.h"

#include <confuse.h>
#include <errno.h>
#include <pwd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "echod/config-keys.h"
#include "echod/config-text.h"
#include "echod/config-values.h"
#include "shared/macro.h"

/* State of the one parse in progress (libconfuse is not reentrant anyway). */
static struct {
        const char *path;
        const char *text; /* the comment-free file */
        char *error;      /* first error only: later ones are usually consequences */
        int key_line[CONFIG_KEYS_MAX];
} parse;


_printf_(2, 3) static void parse_error_at(int line, const char *fmt, ...) {
        va_list ap;
        char msg[512];

        if (parse.error)
                return;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (line > 0) {
                if (asprintf(&parse.error, "%s:%d: %s", parse.path, line, msg) < 0)
                        parse.error = NULL;
        } else if (asprintf(&parse.error, "%s: %s", parse.path, msg) < 0)
                parse.error = NULL;
}

_printf_(2, 0) static void confuse_error(cfg_t *cfg, const char *fmt, va_list ap) {
        char msg[512];

        vsnprintf(msg, sizeof(msg), fmt, ap);
        parse_error_at(cfg->line, "%s", msg);
}

static int validate_listen(cfg_t *cfg, cfg_opt_t *opt, unsigned n) {
        /* called once per element as the list grows: check the newest one */
        const char *s = cfg_opt_getnstr(opt, n - 1);
        IpAddr a;
        bool wildcard, proxy;

        bool udp = streq(opt->name, "listen_udp");

        if (n > CONFIG_MAX_LISTEN) {
                parse_error_at(cfg->line, "%s: more than %d addresses", opt->name, CONFIG_MAX_LISTEN);
                return -1;
        }
        if (config_parse_listen_entry(s, &a, &wildcard, &proxy) < 0 || (udp && proxy)) {
                if (udp)
                        parse_error_at(cfg->line,
                                       "listen_udp: '%s' is not a numeric ADDRESS:PORT (e.g. \"0.0.0.0:7\", "
                                       "\"[::]:7\", \"*:7\"; PROXY protocol is for TCP only)",
                                       s);
                else
                        parse_error_at(cfg->line,
                                       "listen: '%s' is not a numeric ADDRESS:PORT, optionally followed by \" proxy\" "
                                       "(e.g. \"0.0.0.0:7\", \"[::]:7\", \"*:7\", \"127.0.0.1:7007 proxy\")",
                                       s);
                return -1;
        }
        for (unsigned i = 0; i + 1 < n; i++) {
                IpAddr b;
                bool wb, pb;
                (void) config_parse_listen_entry(cfg_opt_getnstr(opt, i), &b, &wb, &pb);
                if (config_endpoints_overlap(&a, wildcard, &b, wb)) {
                        parse_error_at(cfg->line, "%s: '%s' duplicates '%s'", opt->name, s, cfg_opt_getnstr(opt, i));
                        return -1;
                }
        }
        return 0;
}

static int validate_cidr(cfg_t *cfg, cfg_opt_t *opt, unsigned n) {
        const char *s = cfg_opt_getnstr(opt, n - 1);
        char fixed[IPADDR_STR_MAX];
        IpAddr a;

        if (n > CONFIG_MAX_CIDRS) {
                parse_error_at(cfg->line, "%s: more than %d entries", opt->name, CONFIG_MAX_CIDRS);
                return -1;
        }
        switch (ipaddr_parse_prefix(s, &a)) {
        case 0:
                break;
        case -EDOM: /* sshd's rule: a mask with host bits set is an error, not silently widened */
                parse_error_at(cfg->line, "%s: '%s' has host bits set (did you mean '%s'?)", opt->name, s,
                               ipaddr_format_prefix(&a, fixed));
                return -1;
        case -ERANGE:
                parse_error_at(cfg->line, "%s: '%s': prefix length too long for the address family", opt->name, s);
                return -1;
        default:
                parse_error_at(cfg->line, "%s: '%s' is not a numeric CIDR (e.g. \"192.0.2.0/24\", \"2001:db8::/32\")",
                               opt->name, s);
                return -1;
        }
        for (unsigned i = 0; i + 1 < n; i++) {
                IpAddr b;
                (void) ipaddr_parse_prefix(cfg_opt_getnstr(opt, i), &b);
                if (ipaddr_equal(&a, &b)) {
                        parse_error_at(cfg->line, "%s: '%s' is listed twice", opt->name, s);
                        return -1;
                }
        }
        return 0;
}

/* Numbers are decimal, as echod.conf(5) says. libconfuse reads integers with strtol(base 0), so
 * "0300" would be octal 192 and "0x10" hex 16, and floats with strtod, which takes hex too: its
 * own parsing is replaced by these callbacks, which accept only an optional '-', digits without a
 * leading zero, and for floats a fraction and an exponent. */
static int parse_int(cfg_t *cfg, cfg_opt_t *opt, const char *value, void *result) {
        const Key *k = config_key_find(opt->name);
        long v;

        if (!value || !config_is_decimal(value, false)) {
                if (value && config_looks_numeric(value))
                        parse_error_at(cfg->line,
                                       "%s: '%s' is not a decimal integer (leading zeros and 0x are not accepted)",
                                       opt->name, value);
                else
                        parse_error_at(cfg->line, "invalid integer value for option '%s'", opt->name);
                return -1;
        }
        errno = 0;
        v = strtol(value, NULL, 10);
        if (errno == ERANGE) {
                parse_error_at(cfg->line, "%s: value %s out of range %.0f..%.0f", opt->name, value,
                               k ? k->min : 0, k ? k->max : 0);
                return -1;
        }
        *(long *) result = v;
        return 0;
}

static int parse_float(cfg_t *cfg, cfg_opt_t *opt, const char *value, void *result) {
        const Key *k = config_key_find(opt->name);
        double v;

        if (!value || !config_is_decimal(value, true)) {
                if (value && config_looks_numeric(value))
                        parse_error_at(cfg->line,
                                       "%s: '%s' is not a decimal number (leading zeros and 0x are not accepted)",
                                       opt->name, value);
                else
                        parse_error_at(cfg->line, "invalid floating point value for option '%s'", opt->name);
                return -1;
        }
        errno = 0;
        v = strtod(value, NULL);
        if (errno == ERANGE) {
                parse_error_at(cfg->line, "%s: value %s out of range %g..%g", opt->name, value, k ? k->min : 0,
                               k ? k->max : 0);
                return -1;
        }
        *(double *) result = v;
        return 0;
}

static int validate_key(cfg_t *cfg, cfg_opt_t *opt) {
        const Key *k = config_key_find(opt->name);
        unsigned n = cfg_opt_size(opt);

        if (!k)
                return 0;
        parse.key_line[k - config_keys] = cfg->line;
        if (n == 0)
                return 0;

        switch (k->type) {
        case KEY_UINT:
        case KEY_U64: {
                long v = cfg_opt_getnint(opt, 0);
                if (v < (long) k->min || (double) v > k->max) {
                        parse_error_at(cfg->line, "%s: value %ld out of range %.0f..%.0f", k->name, v, k->min,
                                       k->max);
                        return -1;
                }
                return 0;
        }
        case KEY_FLOAT: {
                double v = cfg_opt_getnfloat(opt, 0);
                if (!(v >= k->min && v <= k->max)) {
                        parse_error_at(cfg->line, "%s: value %g out of range %g..%g", k->name, v, k->min, k->max);
                        return -1;
                }
                return 0;
        }
        case KEY_ENUM: {
                const char *v = cfg_opt_getnstr(opt, 0);
                for (unsigned i = 0; k->values[i]; i++)
                        if (streq(v, k->values[i]))
                                return 0;
                parse_error_at(cfg->line, "%s: '%s' is not one of: %s | %s", k->name, v, k->values[0], k->values[1]);
                return -1;
        }
        case KEY_LISTEN:
                return validate_listen(cfg, opt, n);
        case KEY_CIDRS:
                return validate_cidr(cfg, opt, n);
        case KEY_PORTS: {
                long v = cfg_opt_getnint(opt, n - 1);
                if (n > 65536 || v < 0 || v > 65535) {
                        parse_error_at(cfg->line, "%s: %ld is not a port (0..65535)", k->name, v);
                        return -1;
                }
                return 0;
        }
        default:
                return 0;
        }
}

Config *config_free(Config *c) {
        if (!c)
                return NULL;
        for (unsigned i = 0; i < c->listen.n; i++)
                free(c->listen.items[i].text);
        free(c->listen.items);
        for (unsigned i = 0; i < c->listen_udp.n; i++)
                free(c->listen_udp.items[i].text);
        free(c->listen_udp.items);
        free(c->udp_deny_ports.items);
        free(c->allow.items);
        free(c->deny.items);
        free(c->proxy_trusted.items);
        free(c->user);
        free(c->group);
        free(c->pidfile);
        free(c->control_socket);
        free(c->path);
        free(c);
        return NULL;
}

static int cidrs_from_cfg(cfg_t *cfg, const char *name, CidrList *ret) {
        unsigned n = cfg_size(cfg, name);

        ret->items = calloc(n ? n : 1, sizeof(IpAddr));
        if (!ret->items)
                return -ENOMEM;
        for (unsigned j = 0; j < n; j++)
                if (ipaddr_parse_prefix(cfg_getnstr(cfg, name, j), &ret->items[j]) < 0)
                        return -EINVAL; /* validated already */
        ret->n = n;
        return 0;
}

static int by_port(const void *a, const void *b) {
        return (int) *(const uint16_t *) a - (int) *(const uint16_t *) b;
}

static int ports_from_cfg(cfg_t *cfg, const char *name, PortList *ret) {
        unsigned n = cfg_size(cfg, name), m = 0;

        ret->items = calloc(n ? n : 1, sizeof(uint16_t));
        if (!ret->items)
                return -ENOMEM;
        for (unsigned j = 0; j < n; j++)
                ret->items[j] = (uint16_t) cfg_getnint(cfg, name, j); /* validated already */
        qsort(ret->items, n, sizeof(uint16_t), by_port);
        for (unsigned j = 0; j < n; j++)
                if (m == 0 || ret->items[m - 1] != ret->items[j])
                        ret->items[m++] = ret->items[j];
        ret->n = m;
        return 0;
}

static int config_from_cfg(cfg_t *cfg, const char *path, Config **ret) {
        _cleanup_(config_freep) Config *c = calloc(1, sizeof(Config));

        if (!c || !(c->path = strdup(path)))
                return -ENOMEM;
        for (size_t i = 0; i < config_n_keys; i++) {
                const Key *k = &config_keys[i];
                void *field = (char *) c + k->offset;

                switch (k->type) {
                case KEY_UINT:
                        *(unsigned *) field = (unsigned) cfg_getint(cfg, k->name);
                        break;
                case KEY_U64:
                        *(uint64_t *) field = (uint64_t) cfg_getint(cfg, k->name);
                        break;
                case KEY_FLOAT:
                        *(double *) field = cfg_getfloat(cfg, k->name);
                        break;
                case KEY_BOOL:
                        *(bool *) field = cfg_getbool(cfg, k->name);
                        break;
                case KEY_ENUM: {
                        const char *v = cfg_getstr(cfg, k->name);
                        for (int j = 0; k->values[j]; j++)
                                if (streq(v, k->values[j]))
                                        *(int *) field = j;
                        break;
                }
                case KEY_STR: {
                        const char *v = cfg_getstr(cfg, k->name);
                        if (!(*(char **) field = strdup(v ? v : "")))
                                return -ENOMEM;
                        break;
                }
                case KEY_CIDRS: {
                        int r = cidrs_from_cfg(cfg, k->name, field);
                        if (r < 0)
                                return r;
                        break;
                }
                case KEY_PORTS: {
                        int r = ports_from_cfg(cfg, k->name, field);
                        if (r < 0)
                                return r;
                        break;
                }
                case KEY_LISTEN: {
                        ListenList *l = field;
                        unsigned n = cfg_size(cfg, k->name);
                        l->items = calloc(n ? n : 1, sizeof(ListenEntry));
                        if (!l->items)
                                return -ENOMEM;
                        for (unsigned j = 0; j < n; j++) {
                                ListenEntry *e = &l->items[j];
                                if (!(e->text = strdup(cfg_getnstr(cfg, k->name, j))))
                                        return -ENOMEM;
                                l->n++;
                                if (config_parse_listen_entry(e->text, &e->addr, &e->wildcard, &e->proxy) < 0)
                                        return -EINVAL; /* validated already */
                        }
                        break;
                }
                }
        }
        *ret = TAKE_PTR(c);
        return 0;
}

static int key_line(const char *name) {
        const Key *k = config_key_find(name);
        if (!k)
                return 0;
        return parse.key_line[k - config_keys] > 0 ? parse.key_line[k - config_keys] : config_text_find_assignment(parse.text, name);
}

/* The one place where a default yields to what the file says: a key with def_capped_by that the
 * file does not write (validate_key saw no line for it) takes the smaller of its default and the
 * other key, so lowering only max_connections never turns max_per_source's default into an error
 * the user never wrote, and -T shows the value in force. What the file writes, the default
 * included, is left as written, for config_check. */
static void config_apply_defaults(Config *c) {
        for (size_t i = 0; i < config_n_keys; i++) {
                const Key *k = &config_keys[i];
                if (!k->def_capped_by || parse.key_line[i] > 0)
                        continue;
                unsigned *field = (unsigned *) ((char *) c + k->offset);
                const Key *o = config_key_find(k->def_capped_by);
                unsigned other = *(const unsigned *) ((const char *) c + o->offset);
                *field = MIN((unsigned) k->def_int, other);
        }
}

/* Checks that involve more than one key. */
static int config_check(const Config *c) {
        if (c->listen.n == 0) {
                parse_error_at(key_line("listen"), "listen: at least one address is required");
                return -EINVAL;
        }
        if (c->max_per_source > c->max_connections) {
                int l1 = key_line("max_per_source"), l2 = key_line("max_connections");
                parse_error_at(MAX(l1, l2), "max_per_source (%u) exceeds max_connections (%u%s)",
                               c->max_per_source, c->max_connections, l2 > 0 ? "" : ", the default");
                return -EINVAL;
        }
        if (c->group[0] && !c->user[0]) {
                parse_error_at(key_line("group"), "group: set only together with user");
                return -EINVAL;
        }
        /* started as root, echod runs as `user`: never as root itself, for its children would be
         * root too, and the kernel does not hold uid 0 to RLIMIT_NPROC 0, the limit that keeps a
         * compromised child from forking (echod(8), SECURITY) */
        if (geteuid() == 0) {
                struct passwd *pw = c->user[0] ? getpwnam(c->user) : NULL;
                if (!c->user[0] || (pw && pw->pw_uid == 0)) {
                        parse_error_at(key_line("user"),
                                       "user: '%s' would run every connection's process as root, where the "
                                       "sandbox cannot stop it forking; name an unprivileged user (e.g. nobody)",
                                       c->user);
                        return -EINVAL;
                }
        }
        for (unsigned i = 0; i < c->deny.n; i++)
                for (unsigned j = 0; j < c->allow.n; j++)
                        if (ipaddr_equal(&c->deny.items[i], &c->allow.items[j])) {
                                char p[IPADDR_STR_MAX];
                                parse_error_at(key_line("deny"), "deny: '%s' is also in allow",
                                               ipaddr_format_prefix(&c->deny.items[i], p));
                                return -EINVAL;
                        }
        if (c->connection_burst > 0 && c->connection_rate == 0) {
                parse_error_at(key_line("connection_burst"), "connection_burst is set but connection_rate is 0");
                return -EINVAL;
        }
        if (c->per_source_burst > 0 && c->per_source_rate == 0) {
                parse_error_at(key_line("per_source_burst"), "per_source_burst is set but per_source_rate is 0");
                return -EINVAL;
        }
        if (c->udp_burst > 0 && c->udp_rate == 0) {
                parse_error_at(key_line("udp_burst"), "udp_burst is set but udp_rate is 0");
                return -EINVAL;
        }
        if (c->udp_byte_rate > 0 && config_burst(c->udp_byte_rate, c->udp_byte_burst) < c->udp_max_size) {
                parse_error_at(MAX(key_line("udp_byte_burst"), key_line("udp_max_size")),
                               "udp_byte_burst (%u) is below udp_max_size (%u): the largest datagrams "
                               "could never be answered",
                               config_burst(c->udp_byte_rate, c->udp_byte_burst), c->udp_max_size);
                return -EINVAL;
        }
        bool any_proxy = c->proxy_protocol;
        for (unsigned i = 0; i < c->listen.n; i++)
                any_proxy = any_proxy || c->listen.items[i].proxy;
        if (any_proxy && c->proxy_trusted.n == 0) {
                parse_error_at(key_line("proxy_trusted"),
                               "proxy_trusted is empty but a listener requires PROXY headers: nobody could connect");
                return -EINVAL;
        }
        if (c->control_socket[0] && c->control_socket[0] != '/') {
                parse_error_at(key_line("control_socket"), "control_socket: '%s' is not an absolute path",
                               c->control_socket);
                return -EINVAL;
        }
        if (strlen(c->control_socket) >= 108) { /* sizeof(sun_path) */
                parse_error_at(key_line("control_socket"), "control_socket: path longer than 107 bytes");
                return -EINVAL;
        }
        if (c->pidfile[0] && c->pidfile[0] != '/') {
                parse_error_at(key_line("pidfile"), "pidfile: '%s' is not an absolute path", c->pidfile);
                return -EINVAL;
        }
        return 0;
}

int config_load(const char *path, Config **ret, char **ret_error) {
        cfg_opt_t opts[CONFIG_KEYS_MAX + 1];
        _cleanup_(freep) char *buf = NULL;
        _cleanup_(config_freep) Config *c = NULL;
        cfg_t *cfg;
        int r;

        parse.path = path;
        parse.error = NULL;
        memset(parse.key_line, 0, sizeof(parse.key_line));

        r = config_text_read(path, &buf);
        if (r < 0) {
                parse_error_at(0, "cannot read: %s", strerror(-r));
                goto fail;
        }
        config_text_strip_comments(buf);
        parse.text = buf;

        for (size_t i = 0; i < config_n_keys; i++) {
                const Key *k = &config_keys[i];
                switch (k->type) {
                case KEY_UINT:
                case KEY_U64:
                        opts[i] = (cfg_opt_t) CFG_INT_CB(k->name, k->def_int, CFGF_NONE, parse_int);
                        break;
                case KEY_FLOAT:
                        opts[i] = (cfg_opt_t) CFG_FLOAT_CB(k->name, (double) k->def_int, CFGF_NONE, parse_float);
                        break;
                case KEY_BOOL:
                        opts[i] = (cfg_opt_t) CFG_BOOL(k->name, k->def_int ? cfg_true : cfg_false, CFGF_NONE);
                        break;
                case KEY_STR:
                case KEY_ENUM:
                        opts[i] = (cfg_opt_t) CFG_STR(k->name, (char *) k->def_str, CFGF_NONE);
                        break;
                case KEY_LISTEN:
                case KEY_CIDRS:
                        opts[i] = (cfg_opt_t) CFG_STR_LIST(k->name, (char *) k->def_str, CFGF_NONE);
                        break;
                case KEY_PORTS:
                        opts[i] = (cfg_opt_t) CFG_INT_LIST_CB(k->name, (char *) k->def_str, CFGF_NONE, parse_int);
                        break;
                }
        }
        opts[config_n_keys] = (cfg_opt_t) CFG_END();

        cfg = cfg_init(opts, CFGF_NONE);
        if (!cfg) {
                r = -ENOMEM;
                goto fail;
        }
        cfg_set_error_function(cfg, confuse_error);
        for (size_t i = 0; i < config_n_keys; i++)
                cfg_set_validate_func(cfg, config_keys[i].name, validate_key);

        r = cfg_parse_buf(cfg, buf);
        if (r == CFG_SUCCESS)
                r = config_from_cfg(cfg, path, &c);
        else {
                parse_error_at(0, "parse error");
                r = -EINVAL;
        }
        cfg_free(cfg); /* a failed parse holds garbage: nothing of it survives */
        if (r < 0)
                goto fail;

        config_apply_defaults(c);
        r = config_check(c);
        if (r < 0)
                goto fail;
        c->max_connections_line = key_line("max_connections");

        parse.text = NULL;
        *ret = TAKE_PTR(c);
        return 0;

fail:
        parse.text = NULL;
        if (r != -ENOMEM)
                r = -EINVAL;
        if (ret_error)
                *ret_error = parse.error;
        else
                free(parse.error);
        parse.error = NULL;
        return r;
}

static unsigned addresses(const ListenList *l, bool proxy, bool datagram, ListenAddr *out, unsigned max) {
        unsigned n = 0;

        for (unsigned i = 0; i < l->n; i++) {
                IpAddr e[2];
                unsigned ne = config_endpoint_expand(&l->items[i].addr, l->items[i].wildcard, e);
                for (unsigned j = 0; j < ne && n < max; j++)
                        out[n++] = (ListenAddr) { .addr = e[j], .proxy = proxy || l->items[i].proxy,
                                                  .datagram = datagram };
        }
        return n;
}

unsigned config_listen_addresses(const Config *c, ListenAddr *out, unsigned max) {
        return addresses(&c->listen, c->proxy_protocol, false, out, max);
}

unsigned config_udp_addresses(const Config *c, ListenAddr *out, unsigned max) {
        return addresses(&c->listen_udp, false, true, out, max);
}

uint64_t config_nofile_need(const Config *c) {
        ListenAddr addrs[4 * CONFIG_MAX_LISTEN];
        unsigned n = config_listen_addresses(c, addrs, ELEMENTSOF(addrs));

        n += config_udp_addresses(c, addrs + n, ELEMENTSOF(addrs) - n);
        return (uint64_t) c->max_connections + n + CONFIG_NOFILE_OWN;
}

int config_check_nofile(const Config *c, uint64_t limit, char **ret_error) {
        uint64_t need = config_nofile_need(c);
        char where[32] = "";
        int r;

        if (limit >= need)
                return 0;
        if (!ret_error)
                return -EMFILE;
        if (c->max_connections_line > 0)
                snprintf(where, sizeof(where), ":%d", c->max_connections_line);
        r = asprintf(ret_error,
                     "%s%s: max_connections: %u%s needs %llu file descriptors; this process may have %llu "
                     "(raise LimitNOFILE= / ulimit -n)",
                     c->path, where, c->max_connections, c->max_connections_line > 0 ? "" : " (the default)",
                     (unsigned long long) need, (unsigned long long) limit);
        if (r < 0)
                *ret_error = NULL;
        return -EMFILE;
}

unsigned config_burst(double rate, unsigned burst) {
        if (burst > 0)
                return burst;
        unsigned r = (unsigned) rate;
        if ((double) r < rate)
                r++;
        return r > 0 ? r : 1;
}
