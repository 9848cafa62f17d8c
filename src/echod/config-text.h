/* The text of echod.conf before libconfuse sees it: reading, comment removal, key lines. */
#pragma once

/* Read a whole config file (at most 1 MiB, no NUL bytes). Returns 0 or -errno. */
int config_text_read(const char *path, char **ret);

/* Replace comments ('#', '//', C comments) outside quoted strings with spaces, keeping newlines. */
void config_text_strip_comments(char *s);

/* The line of the last "name =" in text, or 0 (for keys libconfuse never validated). */
int config_text_find_assignment(const char *text, const char *name);
