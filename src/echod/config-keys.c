/* echod.conf's keys: the table, and the effective configuration printed from it (config-keys.h). */
#include "echod/config-keys.h"

#include <stdio.h>
#include <string.h>

#include "shared/macro.h"

static const char *const at_capacity_values[] = { "refuse", "queue", NULL };

#define KEY_NUM(n, t, d, lo, hi) { #n, t, d, NULL, lo, hi, offsetof(Config, n), NULL, NULL }
#define KEY_UNSIGNED(n, d, lo, hi) KEY_NUM(n, KEY_UINT, d, lo, hi)
#define KEY_UNSIGNED_CAPPED(n, d, lo, hi, other) { #n, KEY_UINT, d, NULL, lo, hi, offsetof(Config, n), NULL, #other }
#define KEY_STRING(n, d) { #n, KEY_STR, 0, d, 0, 0, offsetof(Config, n), NULL, NULL }
#define KEY_LIST(n, t, d) { #n, t, 0, d, 0, 0, offsetof(Config, n), NULL, NULL }
#define KEY_FLAG(n, d) { #n, KEY_BOOL, d, NULL, 0, 1, offsetof(Config, n), NULL, NULL }

const Key config_keys[] = {
        KEY_LIST(listen, KEY_LISTEN, "{\"0.0.0.0:7\", \"[::]:7\"}"),
        KEY_UNSIGNED(backlog, 1024, 1, 65535),
        KEY_UNSIGNED(max_connections, 512, 1, CONFIG_MAX_CONNECTIONS),
        KEY_UNSIGNED_CAPPED(max_per_source, 64, 0, CONFIG_MAX_CONNECTIONS, max_connections),
        KEY_UNSIGNED(source_prefix_v4, 32, 0, 32),
        KEY_UNSIGNED(source_prefix_v6, 64, 0, 128),
        { "at_capacity", KEY_ENUM, 0, "refuse", 0, 0, offsetof(Config, at_capacity), at_capacity_values, NULL },
        KEY_UNSIGNED(queue_timeout, 10, 1, 3600),
        KEY_NUM(connection_rate, KEY_FLOAT, 0, 0, 1e6),
        KEY_UNSIGNED(connection_burst, 0, 0, 1000000),
        KEY_NUM(per_source_rate, KEY_FLOAT, 0, 0, 1e6),
        KEY_UNSIGNED(per_source_burst, 0, 0, 1000000),
        KEY_LIST(allow, KEY_CIDRS, "{}"),
        KEY_LIST(deny, KEY_CIDRS, "{}"),
        KEY_UNSIGNED(idle_timeout, 300, 0, 31 * 24 * 3600),
        KEY_UNSIGNED(stall_timeout, 60, 0, 31 * 24 * 3600),
        KEY_UNSIGNED(max_session, 0, 0, 31 * 24 * 3600),
        KEY_NUM(max_bytes, KEY_U64, 0, 0, 9.0e18),
        KEY_FLAG(proxy_protocol, 0),
        KEY_LIST(proxy_trusted, KEY_CIDRS, "{\"127.0.0.1/32\", \"::1/128\"}"),
        KEY_UNSIGNED(proxy_timeout, 3, 1, 600),
        KEY_FLAG(sandbox, 1),
        KEY_UNSIGNED(shutdown_timeout, 10, 0, 3600),
        KEY_STRING(user, "nobody"),
        KEY_STRING(group, ""),
        KEY_STRING(pidfile, "/run/echod.pid"),
        KEY_STRING(control_socket, "/run/echod/control"),
        KEY_FLAG(log_connections, 1),
        KEY_LIST(listen_udp, KEY_LISTEN, "{}"),
        KEY_NUM(udp_rate, KEY_FLOAT, 10, 0, 1e9),
        KEY_UNSIGNED(udp_burst, 20, 0, 1000000000),
        KEY_NUM(udp_byte_rate, KEY_FLOAT, 16384, 0, 1e12),
        KEY_UNSIGNED(udp_byte_burst, 32768, 0, 2000000000),
        KEY_NUM(udp_budget, KEY_FLOAT, 1000, 0, 1e9),
        KEY_NUM(udp_byte_budget, KEY_FLOAT, 1048576, 0, 1e12),
        KEY_UNSIGNED(udp_sources, 16384, 1, 1048576),
        KEY_UNSIGNED(udp_max_size, 1472, 1, 65507),
        /* echo, active users, daytime, qotd, chargen, time, DNS, TFTP, NTP: services that answer
         * a datagram they cannot parse, so that two of them can loop (echod.conf(5)) */
        KEY_LIST(udp_deny_ports, KEY_PORTS, "{7, 11, 13, 17, 19, 37, 53, 69, 123}"),
};

const size_t config_n_keys = ELEMENTSOF(config_keys);
_Static_assert(ELEMENTSOF(config_keys) <= CONFIG_KEYS_MAX, "CONFIG_KEYS_MAX is too small");

const Key *config_key_find(const char *name) {
        for (size_t i = 0; i < config_n_keys; i++)
                if (streq(config_keys[i].name, name))
                        return &config_keys[i];
        return NULL;
}

/* A double-quoted string that libconfuse reads back as s: '"' and '\' escaped, and '$' too
 * (libconfuse expands "${VAR}" inside double quotes; "\$" is a literal '$'); control characters
 * as \xHH, so the dump is one line per key. */
static void dump_string(FILE *f, const char *s) {
        fputc('"', f);
        for (; *s; s++) {
                unsigned char ch = (unsigned char) *s;
                if (ch == '"' || ch == '\\' || ch == '$')
                        fprintf(f, "\\%c", ch);
                else if (ch < 0x20 || ch == 0x7f)
                        fprintf(f, "\\x%02x", ch);
                else
                        fputc(ch, f);
        }
        fputc('"', f);
}

void config_dump(const Config *c, FILE *f) {
        for (size_t i = 0; i < config_n_keys; i++) {
                const Key *k = &config_keys[i];
                const void *field = (const char *) c + k->offset;

                fprintf(f, "%s = ", k->name);
                switch (k->type) {
                case KEY_UINT:
                        fprintf(f, "%u", *(const unsigned *) field);
                        break;
                case KEY_U64:
                        fprintf(f, "%llu", (unsigned long long) *(const uint64_t *) field);
                        break;
                case KEY_FLOAT:
                        fprintf(f, "%.15g", *(const double *) field);
                        break;
                case KEY_BOOL:
                        fputs(*(const bool *) field ? "true" : "false", f);
                        break;
                case KEY_ENUM:
                        dump_string(f, k->values[*(const int *) field]);
                        break;
                case KEY_STR:
                        dump_string(f, *(char *const *) field);
                        break;
                case KEY_LISTEN: {
                        const ListenList *l = field;
                        fputc('{', f);
                        for (unsigned j = 0; j < l->n; j++) {
                                fputs(j ? ", " : "", f);
                                dump_string(f, l->items[j].text);
                        }
                        fputc('}', f);
                        break;
                }
                case KEY_PORTS: {
                        const PortList *l = field;
                        fputc('{', f);
                        for (unsigned j = 0; j < l->n; j++)
                                fprintf(f, "%s%u", j ? ", " : "", l->items[j]);
                        fputc('}', f);
                        break;
                }
                case KEY_CIDRS: {
                        const CidrList *l = field;
                        fputc('{', f);
                        for (unsigned j = 0; j < l->n; j++) {
                                char p[IPADDR_STR_MAX];
                                fputs(j ? ", " : "", f);
                                dump_string(f, ipaddr_format_prefix(&l->items[j], p));
                        }
                        fputc('}', f);
                        break;
                }
                }
                fputc('\n', f);
        }
}

