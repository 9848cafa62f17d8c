/* The syntax of echod.conf's values, apart from libconfuse: decimal numbers and listen entries.
 * Pure functions on strings and addresses. */
#pragma once

#include <stdbool.h>

#include "shared/ipaddr.h"

/* Plain decimal: an optional '-', digits without a leading zero, and with fraction also a
 * fraction and an exponent ("2.5e-3"); "0300", "0x10", "+5" and ".5" are not. */
bool config_is_decimal(const char *s, bool fraction);
/* Something meant as a number, but not written in decimal: "0300", "0x10", "+5", ".5". */
bool config_looks_numeric(const char *s);

/* "ADDRESS:PORT" optionally followed by " proxy". Returns 0 or -EINVAL. */
int config_parse_listen_entry(const char *s, IpAddr *ret, bool *ret_wildcard, bool *ret_proxy);
/* Expand "*:P" into 0.0.0.0:P and [::]:P; returns the count. */
unsigned config_endpoint_expand(const IpAddr *a, bool wildcard, IpAddr out[2]);
/* Would the two listen entries bind the same address? */
bool config_endpoints_overlap(const IpAddr *a, bool wa, const IpAddr *b, bool wb);
