/* The syntax of echod.conf's values: decimal numbers and listen entries. */
#include "echod/config-values.h"

#include <errno.h>
#include <string.h>

#include "shared/macro.h"

unsigned config_endpoint_expand(const IpAddr *a, bool wildcard, IpAddr out[2]) {
        out[0] = *a;
        if (!wildcard)
                return 1;
        out[1] = (IpAddr) { .family = AF_INET6, .prefixlen = 128, .port = a->port };
        return 2;
}

bool config_endpoints_overlap(const IpAddr *a, bool wa, const IpAddr *b, bool wb) {
        IpAddr ea[2], eb[2];
        unsigned na = config_endpoint_expand(a, wa, ea), nb = config_endpoint_expand(b, wb, eb);

        for (unsigned i = 0; i < na; i++)
                for (unsigned j = 0; j < nb; j++)
                        if (ipaddr_equal(&ea[i], &eb[j]))
                                return true;
        return false;
}

int config_parse_listen_entry(const char *s, IpAddr *ret, bool *ret_wildcard, bool *ret_proxy) {
        char buf[128];
        const char *sp = strchr(s, ' ');
        size_t len = sp ? (size_t) (sp - s) : strlen(s);

        if (len >= sizeof(buf))
                return -EINVAL;
        memcpy(buf, s, len);
        buf[len] = 0;
        *ret_proxy = false;
        if (sp) {
                sp += strspn(sp, " ");
                if (!streq(sp, "proxy"))
                        return -EINVAL;
                *ret_proxy = true;
        }
        return ipaddr_parse_endpoint(buf, ret, ret_wildcard);
}

static size_t digits(const char *s) {
        return strspn(s, "0123456789");
}

bool config_is_decimal(const char *s, bool fraction) {
        const char *p = s + (*s == '-');
        size_t n = digits(p);

        if (n == 0 || (p[0] == '0' && n > 1))
                return false;
        p += n;
        if (fraction && *p == '.') {
                if ((n = digits(++p)) == 0)
                        return false;
                p += n;
        }
        if (fraction && (*p == 'e' || *p == 'E')) {
                p++;
                p += (*p == '+' || *p == '-');
                if ((n = digits(p)) == 0)
                        return false;
                p += n;
        }
        return *p == 0;
}

bool config_looks_numeric(const char *s) {
        s += (*s == '+' || *s == '-');
        return digits(s) > 0 || (s[0] == '.' && digits(s + 1) > 0);
}

