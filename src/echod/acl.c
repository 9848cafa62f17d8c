/* Access lists: allow/deny CIDRs, most specific match wins, checked before fork.
 * Entries are kept sorted by prefix length, longest first, so the first match is the answer. */
#include "echod/acl.h"

#include <errno.h>
#include <stdlib.h>

typedef struct AclEntry {
        IpAddr prefix;
        bool allow;
} AclEntry;

struct Acl {
        AclEntry *entries;
        unsigned n;
        bool default_allow;
};

static int by_length_desc(const void *a, const void *b) {
        const AclEntry *x = a, *y = b;
        return (int) y->prefix.prefixlen - (int) x->prefix.prefixlen;
}

int acl_new(const CidrList *allow, const CidrList *deny, Acl **ret) {
        Acl *acl = calloc(1, sizeof(Acl));
        unsigned n = allow->n + deny->n;

        if (!acl)
                return -ENOMEM;
        acl->entries = calloc(n ? n : 1, sizeof(AclEntry));
        if (!acl->entries) {
                free(acl);
                return -ENOMEM;
        }
        for (unsigned i = 0; i < allow->n; i++)
                acl->entries[acl->n++] = (AclEntry) { allow->items[i], true };
        for (unsigned i = 0; i < deny->n; i++)
                acl->entries[acl->n++] = (AclEntry) { deny->items[i], false };
        qsort(acl->entries, acl->n, sizeof(AclEntry), by_length_desc);
        acl->default_allow = allow->n == 0;
        *ret = acl;
        return 0;
}

Acl *acl_free(Acl *acl) {
        if (acl) {
                free(acl->entries);
                free(acl);
        }
        return NULL;
}

bool acl_allows(const Acl *acl, const IpAddr *peer) {
        for (unsigned i = 0; i < acl->n; i++)
                if (ipaddr_prefix_contains(&acl->entries[i].prefix, peer))
                        return acl->entries[i].allow;
        return acl->default_allow;
}
