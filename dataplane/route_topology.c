/*
 * Topology for routing (routing-semantics §6): domain names and values interned into small
 * ids at registration, so the dataplane compares integers, never strings; transfer rules
 * resolved to those ids. Control thread only, as the rest of the registry.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"
#include "refuse.h"

bool rt_name_ok(const char *s)
{
	return s && s[0] && strlen(s) <= RT_NAME_MAX;
}

static int domain_key_find(const struct rt_router *rt, const char *name)
{
	for (uint32_t i = 0; i < rt->ndomain_keys; i++)
		if (strcmp(rt->domain_key[i], name) == 0)
			return (int)i;
	return -ENOENT;
}

/* Id of domain key @name, interned on first use. Interned names outlive their workers. */
int rt_domain_key_intern(struct rt_router *rt, const char *name)
{
	int k = domain_key_find(rt, name);

	if (k >= 0)
		return k;
	if (rt->ndomain_keys == RT_DOMAIN_KEYS)
		return -ENOSPC;
	if (!(rt->domain_key[rt->ndomain_keys] = strdup(name)))
		return -ENOMEM;
	return (int)rt->ndomain_keys++;
}

/* Value id (>= 1) of @value under key @key, interned on first use. */
int rt_domain_value_intern(struct rt_router *rt, int key, const char *value)
{
	for (uint32_t i = 0; i < rt->ndomain_values; i++)
		if (rt->domain_value_key[i] == key && strcmp(rt->domain_value[i], value) == 0)
			return (int)i + 1;
	if (rt->ndomain_values == RT_DOMAIN_VALUES - 1) /* ids fit the per-key bitmaps */
		return -ENOSPC;
	if (!(rt->domain_value[rt->ndomain_values] = strdup(value)))
		return -ENOMEM;
	rt->domain_value_key[rt->ndomain_values] = (uint8_t)key;
	return (int)++rt->ndomain_values;
}

/* Is a transfer rule well formed? Changes nothing; @t->domain NULL is "no rule". */
int rt_transfer_check(const struct rt_transfer *t, char *err, size_t errlen)
{
	if (!t->domain)
		return 0;
	if (!rt_name_ok(t->domain))
		return dp_refuse(err, errlen, -EINVAL, "transfer domain name empty or too long");
	if (t->enforcement > RT_TRANSFER_REQUIRED)
		return dp_refuse(err, errlen, -EINVAL, "transfer enforcement %d unknown",
			      (int)t->enforcement);
	if (!(t->preferred_weight >= 0.0 && t->preferred_weight <= 1.0))
		return dp_refuse(err, errlen, -EINVAL, "preferred weight %g not in [0, 1]",
			      t->preferred_weight);
	return 0;
}

/* Turn a transfer rule into ids, interning its domain name; @t->domain NULL: no rule. */
int rt_rule_resolve(struct rt_router *rt, const struct rt_transfer *t, struct rt_rule *out,
		    char *err, size_t errlen)
{
	int key, rc = rt_transfer_check(t, err, errlen);

	*out = (struct rt_rule){.key = -1, .enforcement = RT_TRANSFER_NONE, .discount = 1.0};
	if (rc || !t->domain)
		return rc;
	key = rt_domain_key_intern(rt, t->domain);
	if (key < 0)
		return dp_refuse(err, errlen, key, "more than %u topology domain names", RT_DOMAIN_KEYS);
	out->key = (int8_t)key;
	out->enforcement = (uint8_t)t->enforcement;
	out->discount = exp(-tanh(t->preferred_weight));
	return 0;
}

/* Fill the zeros of @cfg with defaults; -EINVAL for a value out of range. */
/* Does @s name domain @name among its topology domains? */
static bool spec_has_domain(const struct rt_worker_spec *s, const char *name)
{
	for (size_t i = 0; i < s->ndomains; i++)
		if (strcmp(s->domains[i].name, name) == 0)
			return true;
	return false;
}

/*
 * A required transfer rule needs the domain it names: a prefill worker without a value under
 * its rule, or a serving worker without one under the router's, could never take a request.
 */
int rt_required_domain_check(const struct rt_router *rt, const struct rt_worker_spec *s,
			     char *err, size_t errlen)
{
	const char *need = NULL;

	if (s->type == RT_PREFILL && s->transfer.domain)
		need = s->transfer.enforcement == RT_TRANSFER_REQUIRED ? s->transfer.domain : NULL;
	else if (rt->rule.enforcement == RT_TRANSFER_REQUIRED)
		need = rt->domain_key[rt->rule.key];
	if (need && !spec_has_domain(s, need))
		return dp_refuse(err, errlen, -EINVAL,
			      "transfer domain '%s' is required, but the worker gives no value for "
			      "it", need);
	return 0;
}
