/* echod.conf's keys: the one table of every key (type, default, range, where it goes in Config),
 * and the effective configuration printed from it (echod -T). Defaults live here and nowhere
 * else; config.c parses and checks with this table. */
#pragma once

#include <stddef.h>

#include "echod/config.h"

/* more than there are keys, for arrays indexed by key */
#define CONFIG_KEYS_MAX 64

typedef enum KeyType { KEY_UINT, KEY_U64, KEY_FLOAT, KEY_BOOL, KEY_STR, KEY_ENUM, KEY_LISTEN, KEY_CIDRS, KEY_PORTS } KeyType;

typedef struct Key {
        const char *name;
        KeyType type;
        long def_int;
        const char *def_str; /* strings and enums; for lists the libconfuse list default */
        double min, max;
        size_t offset;
        const char *const *values; /* KEY_ENUM: the accepted words, in enum order */
        /* KEY_UINT: another limit that caps this one's default: left out of the file, this key is
         * the smaller of def_int and the other; written, it is checked as written */
        const char *def_capped_by;
} Key;

extern const Key config_keys[];
extern const size_t config_n_keys;

const Key *config_key_find(const char *name);
