/*
 * sha256.h — a small SHA-256 (FIPS 180-4) for token digests and request
 * fingerprints, plus a branch-free equality test for secrets.
 */
#ifndef CAL_SHA256_H
#define CAL_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define CAL_SHA256_LEN 32

struct cal_sha256 {
	uint32_t h[8];
	uint64_t len;      /* bytes hashed so far */
	uint8_t buf[64];
	size_t fill;       /* bytes waiting in buf */
};

void cal_sha256_init(struct cal_sha256 *s);
void cal_sha256_update(struct cal_sha256 *s, const void *data, size_t n);
void cal_sha256_final(struct cal_sha256 *s, uint8_t out[CAL_SHA256_LEN]);

/* One-shot digest of n bytes. */
void cal_sha256(const void *data, size_t n, uint8_t out[CAL_SHA256_LEN]);

/* Lower-case hex of a digest into out (65 bytes, NUL-terminated). */
void cal_sha256_hex(const uint8_t d[CAL_SHA256_LEN], char out[65]);

/* 1 when the two digests are equal.  Reads every byte whatever the data, so
 * the time taken says nothing about where they differ. */
int cal_digest_equal(const uint8_t a[CAL_SHA256_LEN], const uint8_t b[CAL_SHA256_LEN]);

#endif
