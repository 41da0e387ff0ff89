/* tests/check_tensor.c — tensors, dtypes, scopes, the tape, the RNG, status
 * messages and the checkpoint state store. */
#include <lathe/lathe.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tensor/state.h"
#include "testutil.h"

START_TEST(test_new_and_shape)
{
    lathe_tensor *t = lathe_tensor_new3(LATHE_F32, 2, 3, 4);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(lathe_tensor_numel(t), 24);
    ck_assert_int_eq((int)lathe_tensor_nbytes(t), 96);
    ck_assert_int_eq((int)t->stride[0], 12);
    ck_assert_int_eq((int)t->stride[2], 1);
    ck_assert(lathe_tensor_is_contiguous(t));
    for (int i = 0; i < 24; i++)
        ck_assert(lathe_tensor_f32(t)[i] == 0.0f);
    char buf[64];
    ck_assert_str_eq(lathe_tensor_shape_str(t, buf, sizeof buf), "[2, 3, 4]");
    ck_assert_ptr_null(lathe_tensor_i32(t));
    lathe_tensor_free(t);
}
END_TEST

START_TEST(test_dtype_names)
{
    enum lathe_dtype d;
    for (int i = 0; i < LATHE_DTYPE_COUNT; i++) {
        ck_assert_int_eq(lathe_dtype_parse(lathe_dtype_name((enum lathe_dtype)i), &d), LATHE_OK);
        ck_assert_int_eq(d, i);
    }
    ck_assert_int_eq(lathe_dtype_parse("F128", &d), LATHE_EINVAL);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "F128"));
    ck_assert_int_eq((int)lathe_dtype_size(LATHE_BF16), 2);
}
END_TEST

START_TEST(test_bf16_f16_conversion)
{
    /* exact values survive; rounding is to nearest even */
    float exact[] = {0.0f, 1.0f, -2.5f, 0.15625f, 65504.0f, -0.0f};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
        ck_assert(lathe_f16_to_f32(lathe_f32_to_f16(exact[i])) == exact[i]);
        if (exact[i] != 65504.0f)
            ck_assert(lathe_bf16_to_f32(lathe_f32_to_bf16(exact[i])) == exact[i]);
    }
    ck_assert_uint_eq(lathe_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(lathe_f32_to_f16(1.0f), 0x3c00);
    /* 1 + 2^-8 is halfway between two bf16 values: ties to even (1.0) */
    ck_assert_uint_eq(lathe_f32_to_bf16(1.00390625f), 0x3f80);
    ck_assert_uint_eq(lathe_f32_to_bf16(1.01171875f), 0x3f82); /* 1+3*2^-8 -> up to even */
    ck_assert_uint_eq(lathe_f32_to_f16(1e6f), 0x7c00);         /* overflow -> inf */
    ck_assert_uint_eq(lathe_f32_to_f16(5.9604645e-8f), 0x0001); /* smallest subnormal */
    ck_assert(isnan(lathe_bf16_to_f32(lathe_f32_to_bf16(NAN))));
    ck_assert(isnan(lathe_f16_to_f32(lathe_f32_to_f16(NAN))));
    /* relative error of a round trip is within half an ulp */
    lathe_rng r;
    lathe_rng_seed(&r, 5);
    for (int i = 0; i < 10000; i++) {
        float x = (float)((lathe_rng_uniform(&r) * 2 - 1) * 1000);
        float b = lathe_bf16_to_f32(lathe_f32_to_bf16(x));
        float h = lathe_f16_to_f32(lathe_f32_to_f16(x));
        ck_assert(fabsf(b - x) <= fabsf(x) * 0x1p-8f);
        ck_assert(fabsf(h - x) <= fmaxf(fabsf(x) * 0x1p-11f, 0x1p-25f));
    }
}
END_TEST

START_TEST(test_fp8_conversion)
{
    /* every finite code decodes and encodes back to itself */
    for (int c = 0; c < 256; c++) {
        float a = lathe_f8e4m3_to_f32((uint8_t)c), b = lathe_f8e5m2_to_f32((uint8_t)c);
        if (!isnan(a))
            ck_assert_uint_eq(lathe_f32_to_f8e4m3(a), (unsigned)c);
        if (!isnan(b))
            ck_assert_uint_eq(lathe_f32_to_f8e5m2(b), (unsigned)c);
    }
    ck_assert_uint_eq(lathe_f32_to_f8e4m3(1.0f), 0x38);
    ck_assert_uint_eq(lathe_f32_to_f8e5m2(1.0f), 0x3C);
    ck_assert(lathe_f8e4m3_to_f32(0x7E) == 448.0f);
    ck_assert(lathe_f8e5m2_to_f32(0x7B) == 57344.0f);
    ck_assert(lathe_f8e4m3_to_f32(0x01) == 0x1p-9f); /* smallest subnormal */
    ck_assert(isnan(lathe_f8e4m3_to_f32(0x7F)));
    ck_assert(isinf(lathe_f8e5m2_to_f32(0x7C)));
    /* ties to even: 1 + 1/16 lies halfway between 1 and 1.125 */
    ck_assert_uint_eq(lathe_f32_to_f8e4m3(1.0625f), 0x38);
    ck_assert_uint_eq(lathe_f32_to_f8e4m3(1.1875f), 0x3A);
    /* past the range: E4M3 has no infinity */
    ck_assert_uint_eq(lathe_f32_to_f8e4m3(1000.0f), 0x7F);
    ck_assert_uint_eq(lathe_f32_to_f8e4m3(-1000.0f), 0xFF);
    ck_assert_uint_eq(lathe_f32_to_f8e4m3(450.0f), 0x7E);
    ck_assert_uint_eq(lathe_f32_to_f8e5m2(1e6f), 0x7C);
    /* the rounding error is at most half a step */
    lathe_rng r;
    lathe_rng_seed(&r, 8);
    for (int i = 0; i < 10000; i++) {
        float x = (float)((lathe_rng_uniform(&r) * 2 - 1) * 400);
        float y = lathe_f8e4m3_to_f32(lathe_f32_to_f8e4m3(x));
        ck_assert(fabsf(y - x) <= fmaxf(fabsf(x) * 0x1p-4f, 0x1p-10f));
    }
    /* tensors convert through the same functions */
    lathe_tensor *t = lathe_tensor_new1(LATHE_F32, 3);
    lathe_tensor_f32(t)[0] = 0.5f;
    lathe_tensor_f32(t)[1] = -3.0f;
    lathe_tensor_f32(t)[2] = 240.0f;
    lathe_tensor *q = lathe_tensor_to_dtype(t, LATHE_F8_E4M3);
    lathe_tensor *back = lathe_tensor_to_dtype(q, LATHE_F32);
    ck_assert_int_eq((int)lathe_tensor_nbytes(q), 3);
    for (int i = 0; i < 3; i++)
        ck_assert(lathe_tensor_f32(back)[i] == lathe_tensor_f32(t)[i]);
    enum lathe_dtype d;
    ck_assert_int_eq(lathe_dtype_parse("F8_E5M2", &d), LATHE_OK);
    ck_assert_int_eq(d, LATHE_F8_E5M2);
    lathe_tensor_free(t);
    lathe_tensor_free(q);
    lathe_tensor_free(back);
}
END_TEST

START_TEST(test_to_dtype_and_copy)
{
    lathe_tensor *t = lathe_tensor_new1(LATHE_F32, 5);
    for (int i = 0; i < 5; i++)
        lathe_tensor_f32(t)[i] = (float)i * 0.5f;
    lathe_tensor *b = lathe_tensor_to_dtype(t, LATHE_BF16);
    lathe_tensor *h = lathe_tensor_to_dtype(b, LATHE_F16);
    lathe_tensor *f = lathe_tensor_to_dtype(h, LATHE_F32);
    for (int i = 0; i < 5; i++)
        ck_assert(lathe_tensor_f32(f)[i] == (float)i * 0.5f);
    lathe_tensor *small = lathe_tensor_new1(LATHE_F32, 4);
    ck_assert_int_eq(lathe_tensor_copy(small, t), LATHE_EINVAL);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "[5]"));
    lathe_tensor_free(t);
    lathe_tensor_free(b);
    lathe_tensor_free(h);
    lathe_tensor_free(f);
    lathe_tensor_free(small);
}
END_TEST

START_TEST(test_scope_frees)
{
    int d = lathe_scope_push();
    ck_assert_int_eq(d, 1);
    lathe_tensor *a = lathe_tensor_new1(LATHE_F32, 3);
    ck_assert(a->flags & LATHE_TENSOR_SCOPED);
    lathe_tensor_free(a); /* a no-op for scoped tensors */
    lathe_tensor *p = lathe_param_new("w", 1, (int64_t[]){3});
    ck_assert(!(p->flags & LATHE_TENSOR_SCOPED));
    ck_assert(p->requires_grad);
    ck_assert_str_eq(p->name, "w");
    lathe_scope_pop();
    /* p outlives the scope */
    lathe_tensor_f32(p)[0] = 1.0f;
    lathe_tensor_free(p);
}
END_TEST

START_TEST(test_backward_only_trainable)
{
    lathe_tensor *w = lathe_param_new("w", 1, (int64_t[]){3});
    lathe_tensor *frozen = lathe_param_new("f", 1, (int64_t[]){3});
    frozen->requires_grad = 0;
    for (int i = 0; i < 3; i++) {
        lathe_tensor_f32(w)[i] = (float)(i + 1);
        lathe_tensor_f32(frozen)[i] = 2.0f;
    }
    lathe_scope_push();
    /* loss = sum(w * f) + sum(w): d/dw = f + 1 = 3 */
    lathe_tensor *loss = lathe_add(lathe_sum(lathe_mul(w, frozen)), lathe_sum(w));
    ck_assert_ptr_nonnull(loss);
    ck_assert_int_eq(lathe_backward(loss, 1.0f), LATHE_OK);
    lathe_scope_pop();
    ck_assert_ptr_nonnull(w->grad);
    ck_assert_ptr_null(frozen->grad);
    for (int i = 0; i < 3; i++)
        ck_assert_float_eq_tol(lathe_tensor_f32(w->grad)[i], 3.0f, 1e-6f);
    /* a second pass accumulates; zero_grad clears */
    lathe_scope_push();
    ck_assert_int_eq(lathe_backward(lathe_sum(w), 2.0f), LATHE_OK);
    lathe_scope_pop();
    ck_assert_float_eq_tol(lathe_tensor_f32(w->grad)[1], 5.0f, 1e-6f);
    lathe_tensor_zero_grad(w);
    ck_assert(lathe_tensor_f32(w->grad)[1] == 0.0f);
    lathe_tensor_free(w);
    lathe_tensor_free(frozen);
}
END_TEST

START_TEST(test_no_grad)
{
    lathe_tensor *w = lathe_param_new("w", 1, (int64_t[]){2});
    lathe_scope_push();
    lathe_no_grad_begin();
    ck_assert(!lathe_grad_enabled());
    lathe_tensor *y = lathe_sum(w);
    ck_assert(!y->requires_grad);
    ck_assert_int_eq(lathe_backward(y, 1.0f), LATHE_EINVAL);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "trainable"));
    lathe_no_grad_end();
    ck_assert(lathe_grad_enabled());
    lathe_scope_pop();
    ck_assert_ptr_null(w->grad);
    lathe_tensor_free(w);
}
END_TEST

START_TEST(test_rng)
{
    lathe_rng a, b;
    lathe_rng_seed(&a, 42);
    lathe_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++)
        ck_assert(lathe_rng_u64(&a) == lathe_rng_u64(&b));
    lathe_rng_seed(&b, 43);
    ck_assert(lathe_rng_u64(&a) != lathe_rng_u64(&b));
    double sum = 0, sq = 0;
    int counts[7] = {0};
    for (int i = 0; i < 70000; i++) {
        double u = lathe_rng_uniform(&a);
        ck_assert(u >= 0.0 && u < 1.0);
        double n = lathe_rng_normal(&a);
        sum += n;
        sq += n * n;
        counts[lathe_rng_below(&a, 7)]++;
    }
    ck_assert(fabs(sum / 70000) < 0.02);
    ck_assert(fabs(sq / 70000 - 1.0) < 0.03);
    for (int i = 0; i < 7; i++)
        ck_assert(counts[i] > 9400 && counts[i] < 10600);
}
END_TEST

START_TEST(test_status)
{
    ck_assert_int_eq(lathe_error(LATHE_EINVAL, "rank must be > 0 (got %d)", -1), LATHE_EINVAL);
    ck_assert_str_eq(lathe_errmsg(), "rank must be > 0 (got -1)");
    ck_assert_int_eq(lathe_error_prefix(LATHE_EINVAL, "[peft] %s", "lora"), LATHE_EINVAL);
    ck_assert_str_eq(lathe_errmsg(), "[peft] lora: rank must be > 0 (got -1)");
    lathe_error_clear();
    ck_assert_str_eq(lathe_errmsg(), "");
    ck_assert_str_eq(lathe_status_str(LATHE_ENOMEM), "out of memory");
}
END_TEST

START_TEST(test_state_roundtrip)
{
    char dir[] = "/tmp/lathe-state-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    lathe_tensor *w = lathe_param_new("w", 2, (int64_t[]){2, 3});
    for (int i = 0; i < 6; i++)
        lathe_tensor_f32(w)[i] = (float)i / 7.0f;
    lathe_state *st = lathe_state_new();
    lathe_state_set_prefix(st, "model.");
    ck_assert_int_eq(lathe_state_put_tensor(st, "w", w), LATHE_OK);
    lathe_tensor *w8 = lathe_tensor_to_dtype(w, LATHE_F8_E4M3); /* FP8 in safetensors */
    ck_assert_int_eq(lathe_state_put_tensor(st, "w8", w8), LATHE_OK);
    lathe_state_set_prefix(st, "loop.");
    ck_assert_int_eq(lathe_state_put_i64(st, "step", 1234567890123LL), LATHE_OK);
    ck_assert_int_eq(lathe_state_put_i64(st, "neg", -5), LATHE_OK);
    ck_assert_int_eq(lathe_state_put_f64(st, "best", 0.1 + 0.2), LATHE_OK);
    ck_assert_int_eq(lathe_state_put_str(st, "name", "tiny"), LATHE_OK);
    ck_assert_int_eq(lathe_state_write(st, dir), LATHE_OK);
    lathe_state_free(st);

    lathe_state *rd;
    ck_assert_int_eq(lathe_state_read(&rd, dir), LATHE_OK);
    lathe_tensor *w2 = lathe_param_new("w", 2, (int64_t[]){2, 3});
    lathe_state_set_prefix(rd, "model.");
    ck_assert_int_eq(lathe_state_get_tensor(rd, "w", w2), LATHE_OK);
    ck_assert_mem_eq(w2->data, w->data, 24);
    lathe_tensor *w8back = lathe_param_new("w8", 2, (int64_t[]){2, 3});
    ck_assert_int_eq(lathe_state_get_tensor(rd, "w8", w8back), LATHE_OK);
    for (int i = 0; i < 6; i++)
        ck_assert(lathe_tensor_f32(w8back)[i] == lathe_f8e4m3_to_f32(((uint8_t *)w8->data)[i]));
    lathe_tensor_free(w8back);
    lathe_tensor_free(w8);
    lathe_tensor *bad = lathe_param_new("w", 1, (int64_t[]){6});
    ck_assert_int_eq(lathe_state_get_tensor(rd, "w", bad), LATHE_EINVAL);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "[2, 3]"));
    ck_assert_int_eq(lathe_state_get_tensor(rd, "missing", w2), LATHE_EINVAL);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "model.missing"));
    lathe_state_set_prefix(rd, "loop.");
    int64_t v;
    double f;
    const char *s;
    ck_assert_int_eq(lathe_state_get_i64(rd, "step", &v), LATHE_OK);
    ck_assert(v == 1234567890123LL);
    ck_assert_int_eq(lathe_state_get_i64(rd, "neg", &v), LATHE_OK);
    ck_assert(v == -5);
    ck_assert_int_eq(lathe_state_get_f64(rd, "best", &f), LATHE_OK);
    ck_assert(f == 0.1 + 0.2); /* bit for bit */
    ck_assert_int_eq(lathe_state_get_str(rd, "name", &s), LATHE_OK);
    ck_assert_str_eq(s, "tiny");
    lathe_state_free(rd);
    lathe_tensor_free(w);
    lathe_tensor_free(w2);
    lathe_tensor_free(bad);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_limits)
{
    ck_assert_ptr_null(lathe_tensor_new(LATHE_F32, 0, (int64_t[]){1}));
    ck_assert_ptr_null(lathe_tensor_new(LATHE_F32, 7, (int64_t[]){1, 1, 1, 1, 1, 1, 1}));
    ck_assert_ptr_null(lathe_tensor_new1(LATHE_F32, -1));
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "negative"));
    ck_assert_ptr_null(lathe_tensor_new2(LATHE_F32, INT64_MAX / 2, 4));
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "overflow"));
    ck_assert_ptr_null(lathe_tensor_new1((enum lathe_dtype)99, 1));
    /* an op given NULL returns NULL and keeps the first message */
    lathe_error(LATHE_EINVAL, "first failure");
    ck_assert_ptr_null(lathe_sum(NULL));
    ck_assert_str_eq(lathe_errmsg(), "first failure");
    ck_assert_int_eq(lathe_backward(NULL, 1.0f), LATHE_EINVAL);
    lathe_tensor *two = lathe_param_new("two", 1, (int64_t[]){2});
    lathe_scope_push();
    ck_assert_int_eq(lathe_backward(lathe_scale(two, 2.0f), 1.0f), LATHE_EINVAL); /* not a scalar */
    lathe_scope_pop();
    lathe_tensor_free(two);
    lathe_state *rd;
    ck_assert_int_eq(lathe_state_read(&rd, "/nonexistent-dir"), LATHE_EIO);
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "/nonexistent-dir/state.json"));
    /* scopes pop cleanly even when unbalanced */
    lathe_scope_pop();
}
END_TEST

START_TEST(test_bf16_frozen_linear)
{
    /* a frozen bf16 weight gives the logits of its f32 rounding, and x still
     * gets its gradient */
    lathe_tensor *w = lathe_param_new("w", 2, (int64_t[]){3, 4});
    lathe_tensor *x = lathe_param_new("x", 2, (int64_t[]){2, 4});
    lathe_rng r;
    lathe_rng_seed(&r, 3);
    for (int i = 0; i < 12; i++)
        lathe_tensor_f32(w)[i] = (float)lathe_rng_normal(&r);
    for (int i = 0; i < 8; i++)
        lathe_tensor_f32(x)[i] = (float)lathe_rng_normal(&r);
    lathe_tensor *wr = lathe_param_new("wr", 2, (int64_t[]){3, 4}); /* f32 copy of the rounded weight */
    for (int i = 0; i < 12; i++)
        lathe_tensor_f32(wr)[i] = lathe_bf16_to_f32(lathe_f32_to_bf16(lathe_tensor_f32(w)[i]));
    wr->requires_grad = 0;
    ck_assert_int_eq(lathe_tensor_set_dtype(w, LATHE_BF16), LATHE_EINVAL); /* trainable */
    w->requires_grad = 0;
    ck_assert_int_eq(lathe_tensor_set_dtype(w, LATHE_BF16), LATHE_OK);
    ck_assert_int_eq(w->dtype, LATHE_BF16);
    ck_assert_int_eq((int)lathe_tensor_nbytes(w), 24);
    lathe_scope_push();
    lathe_tensor *a = lathe_linear(x, w, NULL), *b = lathe_linear(x, wr, NULL);
    ck_assert_ptr_nonnull(a);
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq_tol(lathe_tensor_f32(a)[i], lathe_tensor_f32(b)[i], 1e-6f);
    ck_assert_int_eq(lathe_backward(lathe_sum(a), 1.0f), LATHE_OK);
    lathe_scope_pop();
    ck_assert_ptr_nonnull(x->grad);
    /* d sum(x w^T) / dx[n, i] = sum_o w[o, i] */
    for (int i = 0; i < 4; i++) {
        float want = 0;
        for (int o = 0; o < 3; o++)
            want += lathe_tensor_f32(wr)[o * 4 + i];
        ck_assert_float_eq_tol(lathe_tensor_f32(x->grad)[i], want, 1e-5f);
    }
    w->requires_grad = 1; /* a trainable bf16 weight is refused */
    lathe_scope_push();
    ck_assert_ptr_null(lathe_linear(x, w, NULL));
    ck_assert_ptr_nonnull(strstr(lathe_errmsg(), "trainable"));
    lathe_scope_pop();
    lathe_tensor_free(w);
    lathe_tensor_free(x);
    lathe_tensor_free(wr);
}
END_TEST

static Suite *tensor_suite(void)
{
    Suite *s = suite_create("tensor");
    TCase *core = tcase_create("Core");
    tcase_add_test(core, test_new_and_shape);
    tcase_add_test(core, test_dtype_names);
    tcase_add_test(core, test_bf16_f16_conversion);
    tcase_add_test(core, test_fp8_conversion);
    tcase_add_test(core, test_to_dtype_and_copy);
    tcase_add_test(core, test_scope_frees);
    tcase_add_test(core, test_backward_only_trainable);
    tcase_add_test(core, test_no_grad);
    tcase_add_test(core, test_rng);
    tcase_add_test(core, test_status);
    tcase_add_test(core, test_state_roundtrip);
    tcase_add_test(core, test_bf16_frozen_linear);
    suite_add_tcase(s, core);
    TCase *lim = tcase_create("Limits");
    tcase_add_test(lim, test_limits);
    suite_add_tcase(s, lim);
    return s;
}

int main(void) { return lathe_test_run(tensor_suite()); }
