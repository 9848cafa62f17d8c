/* Unit tests: echod.conf fixtures (tests/configs/{good,bad}), exact file:line errors, -T round trip. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "echod/config.h"
#include "shared/macro.h"

static const char *configs_dir(void) {
        const char *d = getenv("CONFIGS_DIR");
        return d ? d : "tests/configs";
}

/* Every bad fixture starts with "# expect: LINE: TEXT". */
static void check_bad(const char *path) {
        char first[512], want_prefix[600];
        FILE *f = fopen(path, "re");
        char *err = NULL;
        Config *c = NULL;
        int line;

        assert_non_null(f);
        assert_non_null(fgets(first, sizeof(first), f));
        fclose(f);
        first[strcspn(first, "\n")] = 0;
        assert_int_equal(sscanf(first, "# expect: %d:", &line), 1);
        const char *text = strchr(strchr(first, ':') + 1, ':') + 2;

        int r = config_load(path, &c, &err);
        if (r != -EINVAL)
                fail_msg("%s: accepted (r=%d)", path, r);
        assert_null(c);
        assert_non_null(err);
        snprintf(want_prefix, sizeof(want_prefix), "%s:%d: ", path, line);
        if (strncmp(err, want_prefix, strlen(want_prefix)) != 0 || !strstr(err, text))
                fail_msg("%s: got error '%s', want '%s...%s'", path, err, want_prefix, text);
        free(err);
}

static unsigned for_each_fixture(const char *sub, void (*fn)(const char *)) {
        char dir[512];
        unsigned n = 0;

        snprintf(dir, sizeof(dir), "%s/%s", configs_dir(), sub);
        DIR *d = opendir(dir);
        assert_non_null(d);
        for (struct dirent *de; (de = readdir(d));) {
                char path[1024];
                if (!strstr(de->d_name, ".conf"))
                        continue;
                snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
                fn(path);
                n++;
        }
        closedir(d);
        return n;
}

static void test_bad_fixtures(void **state) {
        assert_true(for_each_fixture("bad", check_bad) >= 27);
}

/* Good files load, and the dump of what loaded loads back to the same dump. */
static void check_good(const char *path) {
        char *err = NULL, *dump1 = NULL, *dump2 = NULL;
        size_t len1 = 0, len2 = 0;
        char tmp[] = "/tmp/test-config-XXXXXX";
        Config *c = NULL, *c2 = NULL;

        if (config_load(path, &c, &err) < 0)
                fail_msg("%s: %s", path, err);
        FILE *f = open_memstream(&dump1, &len1);
        config_dump(c, f);
        fclose(f);

        int fd = mkstemp(tmp);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, dump1, len1), (ssize_t) len1);
        close(fd);
        if (config_load(tmp, &c2, &err) < 0)
                fail_msg("%s: dump does not load back: %s\n%s", path, err, dump1);
        f = open_memstream(&dump2, &len2);
        config_dump(c2, f);
        fclose(f);
        assert_string_equal(dump1, dump2);
        unlink(tmp);
        free(dump1);
        free(dump2);
        config_free(c);
        config_free(c2);
}

static void test_good_fixtures(void **state) {
        assert_true(for_each_fixture("good", check_good) >= 4);
}

static Config *load(const char *name) {
        char path[512], *err = NULL;
        Config *c = NULL;

        snprintf(path, sizeof(path), "%s/%s", configs_dir(), name);
        if (config_load(path, &c, &err) < 0)
                fail_msg("%s: %s", path, err);
        return c;
}

static void test_defaults(void **state) {
        Config *c = load("good/empty.conf");
        ListenAddr a[4];
        char buf[IPADDR_STR_MAX];

        assert_int_equal(c->listen.n, 2);
        assert_int_equal(config_listen_addresses(c, a, 4), 2);
        assert_string_equal(ipaddr_format_endpoint(&a[0].addr, buf), "0.0.0.0:7");
        assert_string_equal(ipaddr_format_endpoint(&a[1].addr, buf), "[::]:7");
        assert_int_equal(c->max_connections, 512);
        assert_int_equal(c->max_per_source, 64);
        assert_int_equal(c->source_prefix_v4, 32);
        assert_int_equal(c->source_prefix_v6, 64);
        assert_int_equal(c->idle_timeout, 300);
        assert_int_equal(c->shutdown_timeout, 10);
        assert_string_equal(c->user, "nobody");
        assert_true(c->log_connections);
        config_free(c);
}

/* The largest limits parse (tests/configs/bad/out-of-range.conf: one above them does not). */
static void test_largest_max_connections(void **state) {
        Config *c = load("good/max-connections-largest.conf");

        assert_int_equal(c->max_connections, 262144);
        assert_int_equal(c->max_connections, CONFIG_MAX_CONNECTIONS);
        assert_int_equal(c->max_per_source, 262144);
        config_free(c);
}

static void test_all_keys(void **state) {
        Config *c = load("good/all-keys.conf");

        assert_int_equal(c->listen.n, 2);
        assert_string_equal(c->listen.items[1].text, "[::1]:7007");
        assert_int_equal(c->backlog, 16);
        assert_int_equal(c->max_connections, 10000);
        assert_int_equal(c->max_per_source, 0);
        assert_int_equal(c->source_prefix_v4, 24);
        assert_int_equal(c->source_prefix_v6, 48);
        assert_int_equal(c->idle_timeout, 0);
        assert_string_equal(c->group, "nogroup");
        assert_string_equal(c->pidfile, "");
        assert_false(c->log_connections);
        assert_int_equal(c->at_capacity, AT_CAPACITY_QUEUE);
        assert_int_equal(c->queue_timeout, 5);
        assert_true(c->connection_rate == 100.5);
        assert_int_equal(c->connection_burst, 200);
        assert_true(c->per_source_rate == 0.25);
        assert_int_equal(c->allow.n, 3);
        assert_int_equal(c->deny.n, 2);
        char buf[IPADDR_STR_MAX];
        /* a mapped IPv6 prefix is an IPv4 prefix */
        assert_string_equal(ipaddr_format_prefix(&c->deny.items[1], buf), "10.2.0.0/16");
        assert_int_equal(c->stall_timeout, 0);
        assert_int_equal(c->max_session, 3600);
        assert_int_equal(c->listen_udp.n, 2);
        assert_string_equal(c->listen_udp.items[0].text, "127.0.0.1:7007");
        assert_true(c->udp_rate == 2.5);
        assert_int_equal(c->udp_burst, 5);
        assert_int_equal(c->udp_byte_burst, 2048);
        assert_int_equal(c->udp_sources, 1000);
        assert_int_equal(c->udp_max_size, 512);
        assert_int_equal(c->udp_deny_ports.n, 2);
        assert_int_equal(c->udp_deny_ports.items[1], 19);
        ListenAddr ua[4];
        assert_int_equal(config_udp_addresses(c, ua, 4), 2);
        assert_true(ua[0].datagram && !ua[0].proxy);
        assert_true(c->max_bytes == UINT64_C(1099511627776));
        assert_true(c->proxy_protocol);
        assert_int_equal(c->proxy_trusted.n, 2);
        assert_int_equal(c->proxy_timeout, 5);
        config_free(c);
}

static void test_proxy_listeners(void **state) {
        Config *c = load("good/proxy-listeners.conf");
        ListenAddr a[4];

        assert_int_equal(config_listen_addresses(c, a, 4), 3);
        assert_true(a[0].proxy);
        assert_false(a[1].proxy);
        assert_true(a[2].proxy);
        assert_int_equal(a[2].addr.port, 7009);
        /* the global switch makes every listener a PROXY listener */
        c->proxy_protocol = true;
        assert_int_equal(config_listen_addresses(c, a, 4), 3);
        assert_true(a[1].proxy);
        config_free(c);
}

static void test_wildcard_expands(void **state) {
        Config *c = load("good/wildcard.conf");
        ListenAddr a[4];
        char buf[IPADDR_STR_MAX];

        assert_int_equal(config_listen_addresses(c, a, 4), 2);
        assert_string_equal(ipaddr_format_endpoint(&a[0].addr, buf), "0.0.0.0:7");
        assert_string_equal(ipaddr_format_endpoint(&a[1].addr, buf), "[::]:7");
        config_free(c);
}

static void test_string_escapes(void **state) {
        Config *c = load("good/string-escapes.conf");

        /* a '#' inside a quoted string is not a comment */
        assert_string_equal(c->user, "quoted \"name\" with # hash");
        config_free(c);
}

static void test_missing_file(void **state) {
        char *err = NULL;
        Config *c = NULL;

        assert_int_equal(config_load("/nonexistent/echod.conf", &c, &err), -EINVAL);
        assert_non_null(strstr(err, "/nonexistent/echod.conf: cannot read: No such file or directory"));
        free(err);
}

/* The shipped default must load, unchanged, with the documented defaults. */
static void test_shipped_config(void **state) {
        Config *c = load("../../conf/echod.conf"), *d = load("good/empty.conf");
        char *a = NULL, *b = NULL;
        size_t la, lb;
        FILE *f;

        f = open_memstream(&a, &la);
        config_dump(c, f);
        fclose(f);
        f = open_memstream(&b, &lb);
        config_dump(d, f);
        fclose(f);
        /* every default the file shows is the compiled-in default */
        assert_string_equal(a, b);
        free(a);
        free(b);
        config_free(c);
        config_free(d);
}

/* Load text from a temporary file: the Config, or NULL and the error with the file name cut off
 * ("LINE: message"). */
static Config *load_text(const char *text, char **ret_error) {
        char tmp[] = "/tmp/test-config-XXXXXX", *err = NULL;
        Config *c = NULL;
        int fd = mkstemp(tmp);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t) strlen(text));
        close(fd);
        int r = config_load(tmp, &c, &err);
        unlink(tmp);
        if (r < 0) {
                assert_non_null(err);
                assert_int_equal(strncmp(err, tmp, strlen(tmp)), 0);
                *ret_error = strdup(err + strlen(tmp) + 1);
                free(err);
                return NULL;
        }
        *ret_error = NULL;
        return c;
}

static unsigned per_source_for(const char *text) {
        char *err = NULL;
        Config *c = load_text(text, &err);

        if (!c)
                fail_msg("'%s' refused: %s", text, err);
        unsigned v = c->max_per_source;
        config_free(c);
        return v;
}

static void assert_refused(const char *text, const char *want) {
        char *err = NULL;
        Config *c = load_text(text, &err);

        if (c)
                fail_msg("'%s' accepted, want error '%s'", text, want);
        if (!strstr(err, want))
                fail_msg("'%s': got error '%s', want '%s'", text, err, want);
        free(err);
}

/* The master needs a descriptor per connection, per listener and CONFIG_NOFILE_OWN more: a limit
 * below that is an error naming the file, max_connections' line (or "the default") and the limit. */
static char *nofile_error(const char *text, uint64_t limit) {
        char *err = NULL, *msg = NULL;
        Config *c = load_text(text, &err);

        assert_non_null(c);
        if (config_check_nofile(c, limit, &msg) < 0) {
                assert_non_null(msg);
                assert_int_equal(strncmp(msg, c->path, strlen(c->path)), 0);
                err = strdup(msg + strlen(c->path));
                free(msg);
        }
        config_free(c);
        return err;
}

static void test_nofile(void **state) {
        const char *two = "listen = {\"127.0.0.1:7\", \"[::1]:7\"}\n\nmax_connections = 100000\nmax_per_source = 0\n";
        char *e;

        e = nofile_error(two, 1024);
        assert_string_equal(e, ":3: max_connections: 100000 needs 100034 file descriptors; this process may have 1024 "
                               "(raise LimitNOFILE= / ulimit -n)");
        free(e);
        assert_null(nofile_error(two, 100034));
        e = nofile_error(two, 100033);
        assert_non_null(strstr(e, "may have 100033 "));
        free(e);
        /* "*:7" is two sockets, a UDP one a third */
        e = nofile_error("listen = {\"*:7\"}\nlisten_udp = {\"127.0.0.1:7\"}\n", 100);
        assert_string_equal(e, ": max_connections: 512 (the default) needs 547 file descriptors; this process may have 100 "
                               "(raise LimitNOFILE= / ulimit -n)");
        free(e);
        assert_null(nofile_error("max_connections = 262144\nmax_per_source = 0\n", UINT64_MAX));
}

/* Lowering max_connections below max_per_source's default never makes the file invalid: a
 * max_per_source the file leaves out is min(64, max_connections). One the file writes, 64
 * included, is checked as written. */
static void test_max_per_source_default_follows_max_connections(void **state) {
        assert_int_equal(per_source_for(""), 64);
        assert_int_equal(per_source_for("max_connections = 100\n"), 64);
        assert_int_equal(per_source_for("max_connections = 65\n"), 64);
        assert_int_equal(per_source_for("max_connections = 64\n"), 64);
        assert_int_equal(per_source_for("max_connections = 63\n"), 63);
        assert_int_equal(per_source_for("max_connections = 2\n"), 2);
        assert_int_equal(per_source_for("max_connections = 1\n"), 1);
        /* commented out, as in the shipped file: left out */
        assert_int_equal(per_source_for("#max_per_source = 64\nmax_connections = 2\n"), 2);
        /* chosen values stay as written, the default value included */
        assert_int_equal(per_source_for("max_connections = 100\nmax_per_source = 64\n"), 64);
        assert_int_equal(per_source_for("max_connections = 64\nmax_per_source = 64\n"), 64);
        assert_int_equal(per_source_for("max_connections = 2\nmax_per_source = 1\n"), 1);
        assert_int_equal(per_source_for("max_connections = 2\nmax_per_source = 2\n"), 2);
        assert_int_equal(per_source_for("max_connections = 2\nmax_per_source = 0\n"), 0);
        assert_int_equal(per_source_for("max_connections = 100\nmax_per_source = 100\n"), 100);
        assert_refused("max_connections = 2\nmax_per_source = 3\n", "2: max_per_source (3) exceeds max_connections (2)");
        assert_refused("max_per_source = 3\n\nmax_connections = 2\n",
                       "3: max_per_source (3) exceeds max_connections (2)");
        assert_refused("max_per_source = 513\n", "1: max_per_source (513) exceeds max_connections (512, the default)");
        /* written as the default is written: not silently changed, an error like any other */
        assert_refused("max_connections = 2\nmax_per_source = 64\n",
                       "2: max_per_source (64) exceeds max_connections (2)");
        assert_refused("max_per_source = 64\nmax_connections = 2\n",
                       "2: max_per_source (64) exceeds max_connections (2)");
        assert_refused("max_connections = 63\n\nmax_per_source = 64 # the default\n",
                       "3: max_per_source (64) exceeds max_connections (63)");
}

/* -T prints the value in force, and the dump loads back to itself. */
static void test_max_per_source_dump(void **state) {
        char *err = NULL, *dump = NULL, *dump2 = NULL;
        size_t len = 0, len2 = 0;
        Config *c = load_text("max_connections = 2\n", &err), *c2;
        FILE *f;

        assert_non_null(c);
        f = open_memstream(&dump, &len);
        config_dump(c, f);
        fclose(f);
        assert_non_null(strstr(dump, "\nmax_connections = 2\nmax_per_source = 2\n"));
        c2 = load_text(dump, &err);
        assert_non_null(c2);
        f = open_memstream(&dump2, &len2);
        config_dump(c2, f);
        fclose(f);
        assert_string_equal(dump, dump2);
        free(dump);
        free(dump2);
        config_free(c);
        config_free(c2);
}

/* The shipped file with nothing changed but a lower max_connections is valid. */
static void test_shipped_config_with_lower_max_connections(void **state) {
        char path[512], *text = NULL, *err = NULL;
        const char *from = "\nmax_connections = 512\n";

        snprintf(path, sizeof(path), "%s/../../conf/echod.conf", configs_dir());
        FILE *f = fopen(path, "re");
        assert_non_null(f);
        text = calloc(1, 1 << 20);
        assert_non_null(text);
        size_t n = fread(text, 1, (1 << 20) - 64, f);
        fclose(f);
        text[n] = 0;
        char *at = strstr(text, from);
        assert_non_null(at);
        /* the shipped file shows max_per_source's default as a comment, and does not write it */
        assert_non_null(strstr(text, "\n#max_per_source = 64\n"));
        assert_null(strstr(text, "\nmax_per_source ="));
        memmove(at + strlen("\nmax_connections = 2\n"), at + strlen(from), strlen(at + strlen(from)) + 1);
        memcpy(at, "\nmax_connections = 2\n", strlen("\nmax_connections = 2\n"));

        Config *c = load_text(text, &err);
        if (!c)
                fail_msg("shipped config with max_connections = 2 refused: %s", err);
        assert_int_equal(c->max_connections, 2);
        assert_int_equal(c->max_per_source, 2);
        config_free(c);
        free(text);
}

/* Integers are decimal: never octal ("0300" is not 192) or hex; floats take no hex either. */
static void test_numbers_are_decimal(void **state) {
        char *err = NULL;
        Config *c = load_text("idle_timeout = 300\nstall_timeout = 0\nmax_session = \"120\"\n", &err);

        assert_non_null(c);
        assert_int_equal(c->idle_timeout, 300);
        assert_int_equal(c->stall_timeout, 0);
        assert_int_equal(c->max_session, 120);
        config_free(c);
        c = load_text("connection_rate = 0.5\nper_source_rate = 1e-05\nmax_bytes = 1099511627776\n", &err);
        assert_non_null(c);
        assert_true(c->connection_rate == 0.5);
        assert_true(c->per_source_rate == 1e-05);
        assert_true(c->max_bytes == UINT64_C(1099511627776));
        config_free(c);

        assert_refused("idle_timeout = 0300\n",
                       "1: idle_timeout: '0300' is not a decimal integer (leading zeros and 0x are not accepted)");
        assert_refused("\nidle_timeout = 00\n", "2: idle_timeout: '00' is not a decimal integer");
        assert_refused("backlog = 08\n", "1: backlog: '08' is not a decimal integer");
        assert_refused("max_bytes = 0x10\n", "1: max_bytes: '0x10' is not a decimal integer");
        assert_refused("max_connections = -012\n", "1: max_connections: '-012' is not a decimal integer");
        assert_refused("connection_rate = 0x10\n", "1: connection_rate: '0x10' is not a decimal number");
        assert_refused("connection_rate = 0x1p3\n", "1: connection_rate: '0x1p3' is not a decimal number");
        assert_refused("per_source_rate = 010.5\n", "1: per_source_rate: '010.5' is not a decimal number");
        assert_refused("per_source_rate = .5\n", "1: per_source_rate: '.5' is not a decimal number");
        /* not numbers at all, and the range checks, as before */
        assert_refused("max_connections = many\n", "1: invalid integer value for option 'max_connections'");
        assert_refused("connection_rate = nan\n", "1: invalid floating point value for option 'connection_rate'");
        assert_refused("idle_timeout = -1\n", "1: idle_timeout: value -1 out of range");
        assert_refused("connection_rate = -0.5\n", "1: connection_rate: value -0.5 out of range");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_bad_fixtures),   cmocka_unit_test(test_good_fixtures),
                cmocka_unit_test(test_defaults),       cmocka_unit_test(test_all_keys),
                cmocka_unit_test(test_largest_max_connections),
                cmocka_unit_test(test_nofile),
                cmocka_unit_test(test_wildcard_expands), cmocka_unit_test(test_string_escapes),
                cmocka_unit_test(test_missing_file),   cmocka_unit_test(test_shipped_config),
                cmocka_unit_test(test_proxy_listeners),
                cmocka_unit_test(test_max_per_source_default_follows_max_connections),
                cmocka_unit_test(test_max_per_source_dump),
                cmocka_unit_test(test_shipped_config_with_lower_max_connections),
                cmocka_unit_test(test_numbers_are_decimal),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
