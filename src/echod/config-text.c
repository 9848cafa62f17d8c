/* The text of echod.conf before libconfuse sees it: reading, comment removal, key lines.
 *
 * libconfuse 3.3 miscounts lines after comments (+2 per '#'/'//' comment line) and rejects
 * comments inside {...} lists. We therefore blank out comments ourselves, keeping every newline,
 * and hand libconfuse a comment-free buffer: its line counter is then exact and lists may hold
 * comments. */
#include "echod/config-text.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/macro.h"

int config_text_read(const char *path, char **ret) {
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

/* Replace comments ('#', '//', C comments) outside quoted strings with spaces, keeping newlines. */
void config_text_strip_comments(char *s) {
        char quote = 0;
        char prev = '\n';

        for (char *p = s; *p; p++) {
                /* libconfuse's "${VAR}" (unquoted or in "...") runs to the next '}', across quotes, '#'
                 * and newlines: nothing inside it starts a comment or ends a string */
                if (quote != '\'' && p[0] == '$' && p[1] == '{') {
                        char *end = strchr(p + 2, '}');
                        if (end) {
                                p = end;
                                prev = *p;
                                continue;
                        }
                }
                if (quote) {
                        /* libconfuse's escapes: a backslash and any character in "...", only \' and \\ in '...' */
                        if (*p == '\\' && p[1] && (quote == '"' || p[1] == '\'' || p[1] == '\\'))
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

/* The line of the last "name =" in the file, for keys libconfuse never validated (empty lists). */
int config_text_find_assignment(const char *text, const char *name) {
        size_t len = strlen(name);
        int line = 1, found = 0;

        for (const char *p = text; p && *p; line++) {
                const char *q = p + strspn(p, " \t");
                if (strncmp(q, name, len) == 0 && strchr(" \t=", q[len]))
                        found = line;
                p = strchr(p, '\n');
                if (p)
                        p++;
        }
        return found;
}
