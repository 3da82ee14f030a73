/*
 * fnmatch.c — Python's fnmatch.fnmatchcase semantics, which modelopt uses to
 * match quant_cfg patterns against quantizer names (docs/recipes.md
 * "Matching").
 *
 * Differences from POSIX fnmatch(3) that matter here: no backslash escapes,
 * `*` and `?` match '.' and '/', `[^...]` is NOT a negation (only `[!...]`),
 * a `[` without a closing `]` is an ordinary character, and a reversed range
 * (`[z-a]`) matches nothing.  Bytes are compared (names are ASCII).
 */
#include <string.h>

#include "recipe.h"

/* Where the set starting at p ('[') ends (pointer to its ']'), or NULL when
 * it has none and '[' is literal (Python's scan: optional '!', then a ']'
 * right after is a member). */
static const char *set_end(const char *p)
{
	const char *j = p + 1;
	if (*j == '!')
		j++;
	if (*j == ']')
		j++;
	while (*j && *j != ']')
		j++;
	return *j ? j : NULL;
}

static int set_match(const char *p, const char *end, unsigned char c)
{
	const char *s = p + 1;
	int neg = 0;
	if (*s == '!' && s + 1 <= end) {
		neg = 1;
		s++;
	}
	if (neg && s == end)
		return 1; /* "[!]": any character */
	int hit = 0;
	while (s < end) {
		unsigned char lo = (unsigned char)*s;
		if (s + 2 < end && s[1] == '-') {
			unsigned char hi = (unsigned char)s[2];
			if (lo <= hi && c >= lo && c <= hi)
				hit = 1;
			s += 3;
		} else {
			if (c == lo)
				hit = 1;
			s++;
		}
	}
	return neg ? !hit : hit;
}

int cal_fnmatch(const char *pat, const char *name)
{
	const char *p = pat, *n = name;
	const char *star_p = NULL, *star_n = NULL;
	while (*n) {
		if (*p == '*') {
			while (*p == '*')
				p++;
			if (!*p)
				return 1;
			star_p = p;
			star_n = n;
			continue;
		}
		if (*p == '?') {
			p++;
			n++;
			continue;
		}
		if (*p == '[') {
			const char *e = set_end(p);
			if (e) {
				if (set_match(p, e, (unsigned char)*n)) {
					p = e + 1;
					n++;
					continue;
				}
				goto backtrack;
			}
		}
		if (*p && *p == *n) {
			p++;
			n++;
			continue;
		}
backtrack:
		if (!star_p)
			return 0;
		p = star_p;
		n = ++star_n;
	}
	while (*p == '*')
		p++;
	return *p == 0;
}
