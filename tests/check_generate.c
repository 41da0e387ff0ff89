/* tests/check_generate.c — cached attention against full attention, the
 * token sampler, and lathe_generate's batching on a scripted model. */
#include <lathe/lathe.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gen/generate.h"
#include "testutil.h"

static lathe_tensor *rand_tensor(int ndim, const int64_t *shape, uint64_t seed)
{
    lathe_tensor *t = lathe_tensor_new(LATHE_F32, ndim, shape);
    lathe_rng r;
    lathe_rng_seed(&r, seed);
    for (int64_t i = 0; i < lathe_tensor_numel(t); i++)
        lathe_tensor_f32(t)[i] = (float)(lathe_rng_uniform(&r) * 2 - 1);
    return t;
}

/* rows [from, from+n) of dim 1 of x [B, T, ...] as a new tensor (any
 * 4-byte dtype) */
static lathe_tensor *rows(lathe_tensor *x, int64_t from, int64_t n)
{
    int64_t shape[LATHE_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[1] = n;
    lathe_tensor *out = lathe_tensor_new(x->dtype, x->ndim, shape);
    int64_t inner = lathe_tensor_numel(x) / (x->shape[0] * x->shape[1]);
    for (int64_t b = 0; b < x->shape[0]; b++)
        memcpy((char *)out->data + (size_t)(b * n * inner) * 4,
               (char *)x->data + (size_t)((b * x->shape[1] + from) * inner) * 4, (size_t)(n * inner) * 4);
    return out;
}

START_TEST(test_cached_equals_full)
{
    const int64_t B = 2, T = 7, H = 4, Hkv = 2, D = 8, Tmax = 10;
    lathe_scope_push();
    lathe_tensor *q = rand_tensor(4, (int64_t[]){B, T, H, D}, 1);
    lathe_tensor *k = rand_tensor(4, (int64_t[]){B, T, Hkv, D}, 2);
    lathe_tensor *v = rand_tensor(4, (int64_t[]){B, T, Hkv, D}, 3);
    lathe_tensor *seg = lathe_tensor_new2(LATHE_I32, B, T);
    /* row 1 is left-padded by two */
    for (int64_t t = 0; t < T; t++)
        lathe_tensor_i32(seg)[T + t] = t < 2 ? -1 : 0;
    lathe_tensor *full = lathe_sdpa(q, k, v, seg, 0.0f);
    ck_assert_ptr_nonnull(full);

    lathe_tensor *kc = lathe_tensor_new4(LATHE_F32, B, Tmax, Hkv, D);
    lathe_tensor *vc = lathe_tensor_new4(LATHE_F32, B, Tmax, Hkv, D);
    lathe_tensor *sc = lathe_tensor_new2(LATHE_I32, B, Tmax);
    /* prefill 4 tokens, then one at a time */
    int64_t len = 0;
    for (int64_t step = 0; len < T; step++) {
        int64_t n = step == 0 ? 4 : 1;
        ck_assert_int_eq(lathe_write_rows(kc, rows(k, len, n), len), LATHE_OK);
        ck_assert_int_eq(lathe_write_rows(vc, rows(v, len, n), len), LATHE_OK);
        ck_assert_int_eq(lathe_write_rows(sc, rows(seg, len, n), len), LATHE_OK);
        len += n;
        lathe_tensor *o = lathe_sdpa_cached(rows(q, len - n, n), kc, vc, len, sc, 0.0f);
        ck_assert_ptr_nonnull(o);
        lathe_tensor *want = rows(full, len - n, n);
        for (int64_t i = 0; i < lathe_tensor_numel(o); i++)
            ck_assert_float_eq_tol(lathe_tensor_f32(o)[i], lathe_tensor_f32(want)[i], 1e-5f);
    }
    lathe_scope_pop();
}
END_TEST

START_TEST(test_sampler)
{
    float logits[6] = {0.1f, 2.0f, -1.0f, 1.9f, 0.0f, -3.0f};
    float work[12 * 2];
    lathe_rng r;
    lathe_rng_seed(&r, 9);
    struct lathe_sampling g = {.size = sizeof g, .max_new_tokens = 1, .temperature = 0.0f, .top_p = 1.0f};
    ck_assert_int_eq(lathe_sample_token(logits, 6, &g, &r, work), 1);
    struct lathe_sampling k1 = g;
    k1.temperature = 1.0f;
    k1.top_k = 1;
    ck_assert_int_eq(lathe_sample_token(logits, 6, &k1, &r, work), 1);
    /* top_k = 2 draws only tokens 1 and 3, in proportion e^2 : e^1.9 */
    struct lathe_sampling k2 = g;
    k2.temperature = 1.0f;
    k2.top_k = 2;
    int c1 = 0, c3 = 0;
    for (int i = 0; i < 20000; i++) {
        int32_t t = lathe_sample_token(logits, 6, &k2, &r, work);
        ck_assert(t == 1 || t == 3);
        c1 += t == 1;
        c3 += t == 3;
    }
    double want = exp(2.0) / (exp(2.0) + exp(1.9));
    ck_assert(fabs((double)c1 / 20000 - want) < 0.015);
    /* full softmax frequencies */
    struct lathe_sampling t1 = g;
    t1.temperature = 1.0f;
    int counts[6] = {0};
    double z = 0;
    for (int v = 0; v < 6; v++)
        z += exp(logits[v]);
    for (int i = 0; i < 40000; i++)
        counts[lathe_sample_token(logits, 6, &t1, &r, work)]++;
    for (int v = 0; v < 6; v++)
        ck_assert(fabs(counts[v] / 40000.0 - exp(logits[v]) / z) < 0.012);
    /* top_p small keeps only the most likely token */
    struct lathe_sampling p = t1;
    p.top_p = 0.05f;
    for (int i = 0; i < 100; i++)
        ck_assert_int_eq(lathe_sample_token(logits, 6, &p, &r, work), 1);
    /* same seed, same draws */
    lathe_rng a, b;
    lathe_rng_seed(&a, 4);
    lathe_rng_seed(&b, 4);
    for (int i = 0; i < 50; i++)
        ck_assert_int_eq(lathe_sample_token(logits, 6, &t1, &a, work), lathe_sample_token(logits, 6, &t1, &b, work));
}
END_TEST

/* A scripted model: the next token is (last token + 1) % V, and it records
 * the positions and segments it is shown. */
#define FV 10
struct fake {
    int64_t len, cap, B;
    int32_t last[4];
    int32_t seen_pos[4][64];
    int32_t seen_seg[4][64];
};

static int fake_info(void *self, struct lathe_model_info *i)
{
    (void)self;
    i->vocab_size = FV;
    i->max_seq_len = 64;
    return LATHE_OK;
}

static int fake_cache_new(void *self, int64_t B, int64_t max_len, void **cache)
{
    struct fake *f = self;
    f->len = 0;
    f->cap = max_len;
    f->B = B;
    *cache = f;
    return LATHE_OK;
}

static void fake_cache_free(void *self, void *cache) { (void)self, (void)cache; }

static lathe_tensor *fake_forward_cached(void *self, void *cache, const struct lathe_batch *batch)
{
    struct fake *f = self;
    (void)cache;
    if (f->len + batch->T > f->cap) {
        lathe_error(LATHE_EINVAL, "cache full");
        return NULL;
    }
    lathe_tensor *out = lathe_tensor_new3(LATHE_F32, batch->B, batch->T, FV);
    for (int64_t b = 0; b < batch->B; b++)
        for (int64_t t = 0; t < batch->T; t++) {
            int32_t id = lathe_tensor_i32(batch->input_ids)[b * batch->T + t];
            f->seen_pos[b][f->len + t] = lathe_tensor_i32(batch->positions)[b * batch->T + t];
            f->seen_seg[b][f->len + t] = lathe_tensor_i32(batch->segments)[b * batch->T + t];
            lathe_tensor_f32(out)[(b * batch->T + t) * FV + (id + 1) % FV] = 5.0f;
        }
    f->len += batch->T;
    return out;
}

static const struct lathe_model_ops fake_ops = {
    .size = sizeof fake_ops,
    .info = fake_info,
    .cache_new = fake_cache_new,
    .cache_free = fake_cache_free,
    .forward_cached = fake_forward_cached,
};

START_TEST(test_generate_batch)
{
    struct fake f = {0};
    int32_t p0[] = {1, 2, 3}, p1[] = {7};
    const int32_t *prompts[] = {p0, p1};
    size_t lens[] = {3, 1};
    int32_t stop[] = {6};
    struct lathe_sampling s = {.size = sizeof s, .max_new_tokens = 5, .temperature = 0.0f, .top_p = 1.0f,
                               .stop_ids = stop, .nstop = 1};
    lathe_rng r;
    lathe_rng_seed(&r, 1);
    int32_t *out[2];
    size_t n[2];
    ck_assert_int_eq(lathe_generate(&fake_ops, &f, prompts, lens, 2, &s, &r, out, n), LATHE_OK);
    /* row 0: 4 5 6(stop); row 1: 8 9 0 1 2 (max_new_tokens) */
    ck_assert_int_eq((int)n[0], 3);
    ck_assert_int_eq(out[0][0], 4);
    ck_assert_int_eq(out[0][2], 6);
    ck_assert_int_eq((int)n[1], 5);
    ck_assert_int_eq(out[1][0], 8);
    ck_assert_int_eq(out[1][4], 2);
    /* row 1 was left-padded by 2: padding has segment -1, positions start at
     * its first real token and continue through the generated ones */
    ck_assert_int_eq(f.seen_seg[1][0], -1);
    ck_assert_int_eq(f.seen_seg[1][1], -1);
    ck_assert_int_eq(f.seen_seg[1][2], 0);
    ck_assert_int_eq(f.seen_pos[1][2], 0);
    ck_assert_int_eq(f.seen_pos[1][3], 1);
    ck_assert_int_eq(f.seen_pos[0][3], 3);
    free(out[0]);
    free(out[1]);
}
END_TEST

START_TEST(test_limits)
{
    struct fake f = {0};
    int32_t p0[] = {1};
    const int32_t *prompts[] = {p0};
    size_t lens[] = {1};
    int32_t *out[1];
    size_t n[1];
    lathe_rng r;
    lathe_rng_seed(&r, 1);
    struct lathe_sampling s = {.size = sizeof s, .max_new_tokens = 100, .temperature = 0.0f, .top_p = 1.0f};
    ck_assert_int_eq(lathe_generate(&fake_ops, &f, prompts, lens, 1, &s, &r, out, n), LATHE_EINVAL);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "context"));
    s.max_new_tokens = 2;
    s.top_p = 0.0f;
    ck_assert_int_eq(lathe_generate(&fake_ops, &f, prompts, lens, 1, &s, &r, out, n), LATHE_EINVAL);
    struct lathe_model_ops old = fake_ops;
    old.size = offsetof(struct lathe_model_ops, cache_new); /* a minor-0 plugin */
    s.top_p = 1.0f;
    ck_assert_int_eq(lathe_generate(&old, &f, prompts, lens, 1, &s, &r, out, n), LATHE_EUNSUPPORTED);
    lathe_scope_push();
    lathe_tensor *q = lathe_tensor_new4(LATHE_F32, 1, 2, 3, 4);
    lathe_tensor *kc = lathe_tensor_new4(LATHE_F32, 1, 5, 2, 4);
    ck_assert_ptr_null(lathe_sdpa_cached(q, kc, kc, 2, NULL, 0.0f)); /* 3 heads over 2 */
    lathe_tensor *kc3 = lathe_tensor_new4(LATHE_F32, 1, 5, 3, 4);
    ck_assert_ptr_null(lathe_sdpa_cached(q, kc3, kc3, 6, NULL, 0.0f)); /* len > Tmax */
    ck_assert_int_eq(lathe_write_rows(kc3, q, 4), LATHE_EINVAL);      /* 2 rows at 4 of 5 */
    lathe_scope_pop();
}
END_TEST

static Suite *generate_suite(void)
{
    Suite *s = suite_create("generate");
    TCase *core = tcase_create("Core");
    tcase_add_test(core, test_cached_equals_full);
    tcase_add_test(core, test_sampler);
    tcase_add_test(core, test_generate_batch);
    suite_add_tcase(s, core);
    TCase *lim = tcase_create("Limits");
    tcase_add_test(lim, test_limits);
    suite_add_tcase(s, lim);
    return s;
}

int main(void) { return lathe_test_run(generate_suite()); }
