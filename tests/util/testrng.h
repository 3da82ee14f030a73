/*
 * testrng.h — the random streams the tests and the fixture generator
 * share: splitmix64 (Steele, Lea and Flood's 64-bit mixer over a Weyl
 * sequence), a uniform float in [-1, 1) drawn from it, and FNV-1a to turn a
 * name into a seed.  Header-only and free of Criterion, so the fixture
 * generator (built without it) uses the same streams; every value a test
 * or a fixture derives from a seed depends on these three functions alone.
 */
#ifndef CAL_TESTS_TESTRNG_H
#define CAL_TESTS_TESTRNG_H

#include <stdint.h>

/* The next splitmix64 output; advances *s. */
static inline uint64_t cal_test_splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [-1, 1): the top 53 bits of one output, as k / 2^52 - 1
 * rounded once to float. */
static inline float cal_test_unit(uint64_t *s)
{
	return (float)((int64_t)(cal_test_splitmix(s) >> 11) - (INT64_C(1) << 52)) /
	       (float)(INT64_C(1) << 52);
}

/* The 64-bit FNV offset basis: where the plain FNV-1a hash starts. */
#define CAL_TEST_FNV_BASIS 1469598103934665603ull

/* FNV-1a over the bytes of str, starting from h (CAL_TEST_FNV_BASIS for the
 * plain hash, or a seed to mix one in). */
static inline uint64_t cal_test_fnv1a(uint64_t h, const char *str)
{
	for (; *str; str++)
		h = (h ^ (unsigned char)*str) * 1099511628211ull;
	return h;
}

#endif
