/*
 * A fixed, seedable PRNG for the tests (they never call rand()), so every failure replays:
 * splitmix64's mixer over a state that steps by the golden ratio. No Criterion here, so the
 * plain stress programs and the fuzzer use it too. Not thread-safe: one state per thread.
 */
#ifndef PD_TESTS_RNG_H
#define PD_TESTS_RNG_H

#include <stdbool.h>
#include <stdint.h>

#define T_RNG_STEP 0x9E3779B97F4A7C15ull

/* splitmix64 of @x: also a hash of one word. */
static inline uint64_t t_mix64(uint64_t x)
{
	x += T_RNG_STEP;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

struct t_rng {
	uint64_t s;
};

static inline void t_rng_seed(struct t_rng *r, uint64_t seed)
{
	r->s = seed;
}

static inline uint64_t t_rng_next(struct t_rng *r)
{
	r->s += T_RNG_STEP;
	return t_mix64(r->s);
}

/* Uniform in [0, n), n > 0: a 64x32-bit multiply-shift, unbiased enough and never divides. */
static inline uint32_t t_rng_below(struct t_rng *r, uint32_t n)
{
	return (uint32_t)(((t_rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

static inline bool t_rng_chance(struct t_rng *r, uint32_t percent)
{
	return t_rng_below(r, 100) < percent;
}

#endif
