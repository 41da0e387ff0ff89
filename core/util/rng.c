/* core/util/rng.c — xoshiro256** seeded by splitmix64 (Blackman & Vigna,
 * "Scrambled linear pseudorandom number generators", 2018). */
#include <lathe/rng.h>

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void lathe_rng_seed(lathe_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t lathe_rng_u64(lathe_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double lathe_rng_uniform(lathe_rng *r)
{
    /* top 53 bits -> [0, 1) */
    return (double)(lathe_rng_u64(r) >> 11) * 0x1.0p-53;
}

uint64_t lathe_rng_below(lathe_rng *r, uint64_t n)
{
    /* rejection sampling: no modulo bias */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = lathe_rng_u64(r);
    while (x >= limit);
    return x % n;
}

double lathe_rng_normal(lathe_rng *r)
{
    double u1 = lathe_rng_uniform(r);
    double u2 = lathe_rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

lathe_rng *lathe_rng_global(void)
{
    static lathe_rng g = {{0x9e3779b97f4a7c15ULL, 0xbf58476d1ce4e5b9ULL, 0x94d049bb133111ebULL, 1}};
    return &g;
}
