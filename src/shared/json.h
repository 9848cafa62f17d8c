/* A small streaming JSON writer for echoc's reports and echod's status: writes straight to a
 * FILE*, keeps track of nesting and commas, escapes strings; pretty (two-space indent) or compact. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct JsonWriter {
        FILE *f;
        bool pretty;
        bool first;     /* nothing written yet in the innermost open object or array */
        unsigned depth; /* open objects and arrays; no limit */
} JsonWriter;

/* Pretty: each member on its own line, indented two spaces a level, "key": value.
 * Compact: no whitespace at all. Either way, closing the outermost value ends the line.
 * Nothing is buffered here and nothing returns an error: check ferror(f) (or fflush()) after. */
void json_init(JsonWriter *j, FILE *f, bool pretty);

/* Every value below takes a key: a member of the enclosing object, or NULL for an element of
 * an array (or the outermost value). */
void json_object_open(JsonWriter *j, const char *key);
void json_object_close(JsonWriter *j);
void json_array_open(JsonWriter *j, const char *key);
void json_array_close(JsonWriter *j);

/* Strings per RFC 8259: '"', '\\' and bytes below 0x20 are escaped (as \" \\ \u00XX); every
 * other byte, 0x7f and bytes >= 0x80 included, is copied as it is. Our strings are addresses,
 * paths, host names and strerror() texts: invalid UTF-8 is passed through, not repaired.
 * v NULL writes null. */
void json_str(JsonWriter *j, const char *key, const char *v);
void json_u64(JsonWriter *j, const char *key, uint64_t v);
void json_i64(JsonWriter *j, const char *key, int64_t v);
void json_unsigned(JsonWriter *j, const char *key, unsigned v);
/* Fixed point with six decimals ("%.6f": microseconds in seconds, no exponent); NaN and
 * infinities, which JSON cannot express, are written as null. */
void json_double(JsonWriter *j, const char *key, double v);
void json_bool(JsonWriter *j, const char *key, bool v);
void json_null(JsonWriter *j, const char *key);
