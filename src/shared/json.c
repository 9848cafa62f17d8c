/* The streaming JSON writer (json.h): commas, indentation and string escaping, straight into a
 * FILE*. */
#include "shared/json.h"

#include <inttypes.h>
#include <math.h>

void json_init(JsonWriter *j, FILE *f, bool pretty) {
        *j = (JsonWriter) { .f = f, .pretty = pretty, .first = true };
}

static void json_string(FILE *f, const char *s) {
        fputc('"', f);
        for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
                if (*p == '"' || *p == '\\') {
                        fputc('\\', f);
                        fputc(*p, f);
                } else if (*p < 0x20)
                        fprintf(f, "\\u%04x", *p);
                else
                        fputc(*p, f);
        }
        fputc('"', f);
}

static void json_newline(JsonWriter *j) {
        if (!j->pretty)
                return;
        fputc('\n', j->f);
        for (unsigned i = 0; i < j->depth; i++)
                fputs("  ", j->f);
}

/* The comma, the line break and indent, and the key of the value that follows. */
static void json_item(JsonWriter *j, const char *key) {
        if (j->depth > 0) {
                if (!j->first)
                        fputc(',', j->f);
                json_newline(j);
        }
        j->first = false;
        if (key) {
                json_string(j->f, key);
                fputs(j->pretty ? ": " : ":", j->f);
        }
}

static void json_open(JsonWriter *j, const char *key, char c) {
        json_item(j, key);
        fputc(c, j->f);
        j->depth++;
        j->first = true;
}

static void json_close(JsonWriter *j, char c) {
        bool empty = j->first;

        j->depth--;
        if (!empty)
                json_newline(j);
        fputc(c, j->f);
        if (j->depth == 0)
                fputc('\n', j->f);
        j->first = false; /* the enclosing one has this as a member now */
}

void json_object_open(JsonWriter *j, const char *key) {
        json_open(j, key, '{');
}

void json_object_close(JsonWriter *j) {
        json_close(j, '}');
}

void json_array_open(JsonWriter *j, const char *key) {
        json_open(j, key, '[');
}

void json_array_close(JsonWriter *j) {
        json_close(j, ']');
}

void json_str(JsonWriter *j, const char *key, const char *v) {
        json_item(j, key);
        if (v)
                json_string(j->f, v);
        else
                fputs("null", j->f);
}

void json_u64(JsonWriter *j, const char *key, uint64_t v) {
        json_item(j, key);
        fprintf(j->f, "%" PRIu64, v);
}

void json_i64(JsonWriter *j, const char *key, int64_t v) {
        json_item(j, key);
        fprintf(j->f, "%" PRId64, v);
}

void json_unsigned(JsonWriter *j, const char *key, unsigned v) {
        json_item(j, key);
        fprintf(j->f, "%u", v);
}

void json_double(JsonWriter *j, const char *key, double v) {
        json_item(j, key);
        if (isfinite(v))
                fprintf(j->f, "%.6f", v);
        else
                fputs("null", j->f);
}

void json_bool(JsonWriter *j, const char *key, bool v) {
        json_item(j, key);
        fputs(v ? "true" : "false", j->f);
}

void json_null(JsonWriter *j, const char *key) {
        json_item(j, key);
        fputs("null", j->f);
}
