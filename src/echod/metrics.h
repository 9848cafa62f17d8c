/* The status report for monitoring: the Prometheus text exposition format, version 0.0.4
 * (`echod status --format=prometheus`).
 *
 * Written from the status snapshot (status.h), the one source of the text and JSON forms too: no
 * number is kept for it alone. Every family is named echod_..., has # HELP and # TYPE, counts in
 * base units (seconds, bytes), and a counter's name ends in _total. Labels take a bounded set of
 * values (reasons, states, table names, the configured listen addresses): never a client's
 * address. Owns nothing. */
#pragma once

#include <stdbool.h>
#include <stdio.h>

#include "echod/status.h"

/* Every family of s. Nothing returns an error: check ferror(f) (or fclose()) after. */
void metrics_write(const StatusSnapshot *s, FILE *f);

/* Write s escaped as the format asks: in a label value (label_value true) '\\', '"' and a line
 * feed become \\, \" and \n; in # HELP text, '\\' and a line feed only. Every other byte is copied. */
void metrics_escape(FILE *f, const char *s, bool label_value);
