/*
 * testrng.h — the random streams the tests and the fixture generator
 * share: splitmix64 (Steele, Lea and Flood's 64-bit mixer over a Weyl
 * sequence), a uniform float in [-1, 1) drawn from it, and FNV-1a to turn a
 * name into a seed.  Header-only and free of Criterion, so the fixture
 * generator (built without it) uses the same streams; every value a test
 * or a fixture derives from a seed depends on these three functions alone.
 * The generator and the hash are the engine's own (common/util.h
 * cal_splitmix64, common/hash.h cal_fnv1a).
 */
#ifndef CAL_TESTS_TESTRNG_H
#define CAL_TESTS_TESTRNG_H

#include <stdint.h>
#include <string.h>

#include "common/hash.h"
#include "common/util.h"

/* The next splitmix64 output; advances *s. */
static inline uint64_t cal_test_splitmix(uint64_t *s)
{
	return cal_splitmix64(s);
}

/* Uniform in [-1, 1): the top 53 bits of one output, as k / 2^52 - 1
 * rounded once to float. */
static inline float cal_test_unit(uint64_t *s)
{
	return (float)((int64_t)(cal_test_splitmix(s) >> 11) - (INT64_C(1) << 52)) /
	       (float)(INT64_C(1) << 52);
}

/* Where the plain FNV-1a hash starts (common/hash.h). */
#define CAL_TEST_FNV_BASIS CAL_FNV_SEED

/* FNV-1a over the bytes of str, starting from h (CAL_TEST_FNV_BASIS for the
 * plain hash, or a seed to mix one in). */
static inline uint64_t cal_test_fnv1a(uint64_t h, const char *str)
{
	return cal_fnv1a(h, str, strlen(str));
}

#endif
