/* echod.conf: libconfuse parsing into a plain Config, validation with exact file:line errors.
 *
 * libconfuse 3.3 miscounts lines after comments (+2 per '#'/'//' comment) and rejects comments
 * inside {...} lists. We therefore blank out comments ourselves, keeping every newline, and hand
 * libconfuse a comment-free buffer: its line counter is then exact and lists may hold comments.
 * The parser is not reentrant; echod parses only from its single-threaded master. */
#include "echod/config.h"

#include <confuse.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/macro.h"

/* One table holds every key: its type, default, range and documentation. */
typedef enum KeyType { KEY_INT, KEY_BOOL, KEY_STR, KEY_LISTEN } KeyType;

typedef struct Key {
        const char *name;
        KeyType type;
        long def_int;
        const char *def_str; /* strings; for KEY_LISTEN the libconfuse list default */
        long min, max;
        size_t offset;
} Key;

#define KEY_UINT(n, d, lo, hi) { #n, KEY_INT, d, NULL, lo, hi, offsetof(Config, n) }
#define KEY_STRING(n, d) { #n, KEY_STR, 0, d, 0, 0, offsetof(Config, n) }

static const Key keys[] = {
        { "listen", KEY_LISTEN, 0, "{\"0.0.0.0:7\", \"[::]:7\"}", 0, 0, 0 },
        KEY_UINT(backlog, 1024, 1, 65535),
        KEY_UINT(max_connections, 512, 1, CONFIG_MAX_CONNECTIONS),
        KEY_UINT(max_per_source, 64, 0, CONFIG_MAX_CONNECTIONS),
        KEY_UINT(source_prefix_v4, 32, 0, 32),
        KEY_UINT(source_prefix_v6, 64, 0, 128),
        KEY_UINT(idle_timeout, 300, 0, 31 * 24 * 3600),
        KEY_UINT(shutdown_timeout, 10, 0, 3600),
        KEY_STRING(user, "nobody"),
        KEY_STRING(group, ""),
        KEY_STRING(pidfile, "/run/echod.pid"),
        { "log_connections", KEY_BOOL, 1, NULL, 0, 1, offsetof(Config, log_connections) },
};

/* State of the one parse in progress (libconfuse is not reentrant anyway). */
static struct {
        const char *path;
        const char *text; /* the comment-free file */
        char *error;      /* first error only: later ones are usually consequences */
        int key_line[ELEMENTSOF(keys)];
} parse;

static const Key *key_find(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(keys); i++)
                if (streq(keys[i].name, name))
                        return &keys[i];
        return NULL;
}

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

static void confuse_error(cfg_t *cfg, const char *fmt, va_list ap) {
        char msg[512];

        vsnprintf(msg, sizeof(msg), fmt, ap);
        parse_error_at(cfg->line, "%s", msg);
}

/* Expand "*:P" into 0.0.0.0:P and [::]:P; returns the count. */
static unsigned endpoint_expand(const IpAddr *a, bool wildcard, IpAddr out[2]) {
        out[0] = *a;
        if (!wildcard)
                return 1;
        out[1] = (IpAddr) { .family = AF_INET6, .prefixlen = 128, .port = a->port };
        return 2;
}

static bool endpoints_overlap(const IpAddr *a, bool wa, const IpAddr *b, bool wb) {
        IpAddr ea[2], eb[2];
        unsigned na = endpoint_expand(a, wa, ea), nb = endpoint_expand(b, wb, eb);

        for (unsigned i = 0; i < na; i++)
                for (unsigned j = 0; j < nb; j++)
                        if (ipaddr_equal(&ea[i], &eb[j]))
                                return true;
        return false;
}

static int validate_key(cfg_t *cfg, cfg_opt_t *opt) {
        const Key *k = key_find(opt->name);
        unsigned n = cfg_opt_size(opt);

        if (!k)
                return 0;
        parse.key_line[k - keys] = cfg->line;
        if (n == 0)
                return 0;

        switch (k->type) {
        case KEY_INT: {
                long v = cfg_opt_getnint(opt, 0);
                if (v < k->min || v > k->max) {
                        parse_error_at(cfg->line, "%s: value %ld out of range %ld..%ld", k->name, v, k->min,
                                       k->max);
                        return -1;
                }
                return 0;
        }
        case KEY_LISTEN: {
                /* called once per element as the list grows: check the newest one */
                const char *s = cfg_opt_getnstr(opt, n - 1);
                IpAddr a;
                bool wildcard;
                int r = ipaddr_parse_endpoint(s, &a, &wildcard);
                if (r < 0) {
                        parse_error_at(cfg->line,
                                       "listen: '%s' is not a numeric ADDRESS:PORT "
                                       "(e.g. \"0.0.0.0:7\", \"[::]:7\", \"*:7\")",
                                       s);
                        return -1;
                }
                for (unsigned i = 0; i + 1 < n; i++) {
                        IpAddr b;
                        bool wb;
                        (void) ipaddr_parse_endpoint(cfg_opt_getnstr(opt, i), &b, &wb);
                        if (endpoints_overlap(&a, wildcard, &b, wb)) {
                                parse_error_at(cfg->line, "listen: '%s' duplicates '%s'", s,
                                               cfg_opt_getnstr(opt, i));
                                return -1;
                        }
                }
                return 0;
        }
        default:
                return 0;
        }
}

/* Replace comments ('#', '//', C comments) outside quoted strings with spaces, keeping newlines. */
static void strip_comments(char *s) {
        char quote = 0;
        char prev = '\n';

        for (char *p = s; *p; p++) {
                if (quote) {
                        if (*p == '\\' && p[1] && quote == '"')
                                p++;
                        else if (*p == quote)
                                quote = 0;
                        prev = *p;
                        continue;
                }
                bool token_start = strchr(" \t\r\n{},=(", prev) != NULL;
                if (*p == '"' || *p == '\'') {
                        quote = *p;
                } else if (*p == '#' || (token_start && p[0] == '/' && p[1] == '/')) {
                        for (; *p && *p != '\n'; p++)
                                *p = ' ';
                        if (!*p)
                                break;
                } else if (token_start && p[0] == '/' && p[1] == '*') {
                        char *end = strstr(p + 2, "*/");
                        char *stop = end ? end + 2 : p + strlen(p);
                        for (; p < stop; p++)
                                if (*p != '\n')
                                        *p = ' ';
                        p--;
                }
                prev = *p;
        }
}

static int read_file(const char *path, char **ret) {
        _cleanup_(freep) char *buf = NULL;
        size_t len = 0, cap = 0;
        FILE *f = fopen(path, "re");

        if (!f)
                return negative_errno();
        for (;;) {
                if (cap - len < 4096) {
                        if (cap > (1u << 20)) {
                                fclose(f);
                                return -EFBIG;
                        }
                        char *n = realloc(buf, cap = cap * 2 + 4096);
                        if (!n) {
                                fclose(f);
                                return -ENOMEM;
                        }
                        buf = n;
                }
                size_t got = fread(buf + len, 1, cap - len - 1, f);
                len += got;
                if (got == 0)
                        break;
        }
        int err = ferror(f);
        fclose(f);
        if (err)
                return -EIO;
        buf[len] = 0;
        if (memchr(buf, 0, len))
                return -EBADMSG;
        *ret = TAKE_PTR(buf);
        return 0;
}

Config *config_free(Config *c) {
        if (!c)
                return NULL;
        for (unsigned i = 0; i < c->n_listen; i++)
                free(c->listen[i].text);
        free(c->listen);
        free(c->user);
        free(c->group);
        free(c->pidfile);
        free(c->path);
        free(c);
        return NULL;
}

static int config_from_cfg(cfg_t *cfg, const char *path, Config **ret) {
        _cleanup_(config_freep) Config *c = calloc(1, sizeof(Config));

        if (!c || !(c->path = strdup(path)))
                return -ENOMEM;
        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                const Key *k = &keys[i];
                void *field = (char *) c + k->offset;

                switch (k->type) {
                case KEY_INT:
                        *(unsigned *) field = (unsigned) cfg_getint(cfg, k->name);
                        break;
                case KEY_BOOL:
                        *(bool *) field = cfg_getbool(cfg, k->name);
                        break;
                case KEY_STR: {
                        const char *v = cfg_getstr(cfg, k->name);
                        if (!(*(char **) field = strdup(v ? v : "")))
                                return -ENOMEM;
                        break;
                }
                case KEY_LISTEN: {
                        unsigned n = cfg_size(cfg, k->name);
                        c->listen = calloc(n ? n : 1, sizeof(ListenEntry));
                        if (!c->listen)
                                return -ENOMEM;
                        for (unsigned j = 0; j < n; j++) {
                                ListenEntry *e = &c->listen[j];
                                if (!(e->text = strdup(cfg_getnstr(cfg, k->name, j))))
                                        return -ENOMEM;
                                c->n_listen++;
                                if (ipaddr_parse_endpoint(e->text, &e->addr, &e->wildcard) < 0)
                                        return -EINVAL; /* validated already */
                        }
                        break;
                }
                }
        }
        *ret = TAKE_PTR(c);
        return 0;
}

/* The line of the last "name =" in the file, for keys libconfuse never validated (empty lists). */
static int find_assignment(const char *name) {
        size_t len = strlen(name);
        int line = 1, found = 0;

        for (const char *p = parse.text; p && *p; line++) {
                const char *q = p + strspn(p, " \t");
                if (strncmp(q, name, len) == 0 && strchr(" \t=", q[len]))
                        found = line;
                p = strchr(p, '\n');
                if (p)
                        p++;
        }
        return found;
}

static int key_line(const char *name) {
        const Key *k = key_find(name);
        if (!k)
                return 0;
        return parse.key_line[k - keys] > 0 ? parse.key_line[k - keys] : find_assignment(name);
}

/* Checks that involve more than one key. */
static int config_check(const Config *c) {
        if (c->n_listen == 0) {
                parse_error_at(key_line("listen"), "listen: at least one address is required");
                return -EINVAL;
        }
        if (c->max_per_source > c->max_connections) {
                int l1 = key_line("max_per_source"), l2 = key_line("max_connections");
                parse_error_at(MAX(l1, l2), "max_per_source (%u) exceeds max_connections (%u)",
                               c->max_per_source, c->max_connections);
                return -EINVAL;
        }
        if (c->group[0] && !c->user[0]) {
                parse_error_at(key_line("group"), "group: set only together with user");
                return -EINVAL;
        }
        if (c->pidfile[0] && c->pidfile[0] != '/') {
                parse_error_at(key_line("pidfile"), "pidfile: '%s' is not an absolute path", c->pidfile);
                return -EINVAL;
        }
        return 0;
}

int config_load(const char *path, Config **ret, char **ret_error) {
        cfg_opt_t opts[ELEMENTSOF(keys) + 1];
        _cleanup_(freep) char *buf = NULL;
        _cleanup_(config_freep) Config *c = NULL;
        cfg_t *cfg;
        int r;

        parse.path = path;
        parse.error = NULL;
        memset(parse.key_line, 0, sizeof(parse.key_line));

        r = read_file(path, &buf);
        if (r < 0) {
                parse_error_at(0, "cannot read: %s", strerror(-r));
                goto fail;
        }
        strip_comments(buf);
        parse.text = buf;

        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                const Key *k = &keys[i];
                switch (k->type) {
                case KEY_INT:
                        opts[i] = (cfg_opt_t) CFG_INT(k->name, k->def_int, CFGF_NONE);
                        break;
                case KEY_BOOL:
                        opts[i] = (cfg_opt_t) CFG_BOOL(k->name, k->def_int ? cfg_true : cfg_false, CFGF_NONE);
                        break;
                case KEY_STR:
                        opts[i] = (cfg_opt_t) CFG_STR(k->name, (char *) k->def_str, CFGF_NONE);
                        break;
                case KEY_LISTEN:
                        opts[i] = (cfg_opt_t) CFG_STR_LIST(k->name, (char *) k->def_str, CFGF_NONE);
                        break;
                }
        }
        opts[ELEMENTSOF(keys)] = (cfg_opt_t) CFG_END();

        cfg = cfg_init(opts, CFGF_NONE);
        if (!cfg) {
                r = -ENOMEM;
                goto fail;
        }
        cfg_set_error_function(cfg, confuse_error);
        for (size_t i = 0; i < ELEMENTSOF(keys); i++)
                cfg_set_validate_func(cfg, keys[i].name, validate_key);

        errno = 0; /* libconfuse checks errno for ERANGE without clearing it */
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

        r = config_check(c);
        if (r < 0)
                goto fail;

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

static void dump_string(FILE *f, const char *s) {
        fputc('"', f);
        for (; *s; s++) {
                if (*s == '"' || *s == '\\')
                        fputc('\\', f);
                fputc(*s, f);
        }
        fputc('"', f);
}

void config_dump(const Config *c, FILE *f) {
        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                const Key *k = &keys[i];
                const void *field = (const char *) c + k->offset;

                fprintf(f, "%s = ", k->name);
                switch (k->type) {
                case KEY_INT:
                        fprintf(f, "%u", *(const unsigned *) field);
                        break;
                case KEY_BOOL:
                        fputs(*(const bool *) field ? "true" : "false", f);
                        break;
                case KEY_STR:
                        dump_string(f, *(char *const *) field);
                        break;
                case KEY_LISTEN:
                        fputc('{', f);
                        for (unsigned j = 0; j < c->n_listen; j++) {
                                if (j)
                                        fputs(", ", f);
                                dump_string(f, c->listen[j].text);
                        }
                        fputc('}', f);
                        break;
                }
                fputc('\n', f);
        }
}

unsigned config_listen_addresses(const Config *c, IpAddr *out, unsigned max) {
        unsigned n = 0;

        for (unsigned i = 0; i < c->n_listen; i++) {
                IpAddr e[2];
                unsigned ne = endpoint_expand(&c->listen[i].addr, c->listen[i].wildcard, e);
                for (unsigned j = 0; j < ne && n < max; j++)
                        out[n++] = e[j];
        }
        return n;
}
