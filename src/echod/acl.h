/* Access lists: allow/deny CIDRs, most specific match wins, checked before fork. */
#pragma once

#include <stdbool.h>

#include "echod/config.h"
#include "shared/ipaddr.h"

typedef struct Acl Acl;

/* Build from the config's lists. Returns 0 or -ENOMEM. */
int acl_new(const CidrList *allow, const CidrList *deny, Acl **ret);
Acl *acl_free(Acl *acl);

/* Is the peer allowed? The longest prefix containing it decides; if none does, it is allowed
 * unless the allow list is non-empty. IpAddr keeps mapped IPv4 as IPv4, so ::ffff:a.b.c.d peers
 * meet the IPv4 entries. */
bool acl_allows(const Acl *acl, const IpAddr *peer);
