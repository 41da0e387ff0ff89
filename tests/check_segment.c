/* tests/check_segment.c — lathe_segment_run: recomputation gives the same
 * gradients bit for bit (dropout included), keeps less alive, calls the
 * acquire/release hooks in the order strategies rely on, and reports
 * failures from inside the backward pass. */
#include <lathe/lathe.h>

#include <malloc.h>
#include <string.h>

#include "testutil.h"

enum { NB = 4, C = 6, HID = 16 };

/* ---- a backend that counts live bytes (the CPU one underneath) ---- */

static struct lathe_backend_ops counting;
static long long live, peak;

static void *count_alloc(size_t n)
{
    void *p = lathe_backend_cpu()->alloc(n);
    if (p) {
        live += (long long)malloc_usable_size(p);
        if (live > peak)
            peak = live;
    }
    return p;
}

static void count_free(void *p)
{
    if (p)
        live -= (long long)malloc_usable_size(p);
    lathe_backend_cpu()->free(p);
}

static void use_counting_backend(void)
{
    counting = *lathe_backend_cpu();
    counting.alloc = count_alloc;
    counting.free = count_free;
    ck_assert_int_eq(lathe_backend_set(&counting), LATHE_OK);
}

/* ---- the block: x + W2 · dropout(gelu(W1 · x + b1)) ---- */

struct block {
    lathe_tensor *w1, *b1, *w2;
    lathe_tensor *params[3];
    struct lathe_segment seg;
};

struct ctx {
    struct block *b;
    float p;
};

static lathe_tensor *block_fn(const void *c, lathe_tensor *x)
{
    const struct ctx *cx = c;
    lathe_tensor *h = lathe_gelu(lathe_linear(x, cx->b->w1, cx->b->b1));
    h = lathe_dropout(h, cx->p, 1);
    return lathe_add(x, lathe_linear(h, cx->b->w2, NULL));
}

static void fill(lathe_tensor *t, lathe_rng *r, float s)
{
    float *d = lathe_tensor_f32(t);
    for (int64_t i = 0; i < lathe_tensor_numel(t); i++)
        d[i] = (float)lathe_rng_normal(r) * s;
}

static void block_init(struct block *b, const char *name, uint64_t seed)
{
    lathe_rng r;
    lathe_rng_seed(&r, seed);
    b->w1 = lathe_param_new("w1", 2, (int64_t[]){HID, C});
    b->b1 = lathe_param_new("b1", 1, (int64_t[]){HID});
    b->w2 = lathe_param_new("w2", 2, (int64_t[]){C, HID});
    fill(b->w1, &r, 0.5f);
    fill(b->b1, &r, 0.1f);
    fill(b->w2, &r, 0.5f);
    b->params[0] = b->w1;
    b->params[1] = b->b1;
    b->params[2] = b->w2;
    b->seg = (struct lathe_segment){.name = name, .params = b->params, .nparams = 3};
}

static struct block blk[2];

static void setup(void)
{
    use_counting_backend();
    block_init(&blk[0], "blk.0", 11);
    block_init(&blk[1], "blk.1", 12);
}

/* How a step runs the two blocks. */
enum mode { PLAIN, SEGMENT, RECOMPUTE };

/* One forward + backward; grads of the six parameters and of x (when it
 * requires grad) are copied into out (layout: w1 b1 w2 per block, then x).
 * *after_forward gets the live bytes once the loss exists. */
static size_t step(enum mode mode, int x_grad, float *out, long long *after_forward)
{
    lathe_segment_set_recompute(mode == RECOMPUTE);
    lathe_rng_seed(lathe_rng_global(), 99);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            lathe_tensor_zero_grad(blk[i].params[j]);
    lathe_rng r;
    lathe_rng_seed(&r, 5);
    lathe_tensor *x = x_grad ? lathe_param_new("x", 2, (int64_t[]){NB, C})
                             : lathe_tensor_new_owned(LATHE_F32, 2, (int64_t[]){NB, C});
    fill(x, &r, 1.0f);
    long long base = live;
    lathe_scope_push();
    lathe_tensor *y = x;
    for (int i = 0; i < 2; i++) {
        struct ctx c = {.b = &blk[i], .p = 0.3f};
        y = mode == PLAIN ? block_fn(&c, y) : lathe_segment_run(&blk[i].seg, block_fn, &c, sizeof c, y);
        ck_assert_msg(y != NULL, "%s", lathe_errmsg());
    }
    lathe_tensor *loss = lathe_sum(lathe_mul(y, y));
    ck_assert_ptr_nonnull(loss);
    if (after_forward)
        *after_forward = live - base;
    ck_assert_msg(lathe_backward(loss, 1.0f) == LATHE_OK, "%s", lathe_errmsg());
    size_t n = 0;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++) {
            lathe_tensor *p = blk[i].params[j];
            ck_assert_ptr_nonnull(p->grad);
            memcpy(out + n, p->grad->data, lathe_tensor_nbytes(p));
            n += (size_t)lathe_tensor_numel(p);
        }
    if (x_grad) {
        memcpy(out + n, x->grad->data, lathe_tensor_nbytes(x));
        n += (size_t)lathe_tensor_numel(x);
    }
    lathe_scope_pop();
    lathe_tensor_free(x);
    lathe_segment_set_recompute(0);
    return n;
}

#define NGRAD (2 * (HID * C + HID + C * HID) + NB * C)

START_TEST(recompute_same_gradients)
{
    static float g[3][NGRAD];
    size_t n[3];
    for (int m = 0; m < 3; m++)
        n[m] = step((enum mode)m, 1, g[m], NULL);
    ck_assert_uint_eq(n[0], NGRAD);
    ck_assert_uint_eq(n[1], n[0]);
    ck_assert_uint_eq(n[2], n[0]);
    /* the same ops in the same order with the same dropout masks: equal
     * to the last bit */
    ck_assert_int_eq(memcmp(g[0], g[1], sizeof g[0]), 0);
    ck_assert_int_eq(memcmp(g[0], g[2], sizeof g[0]), 0);
    float nonzero = 0.0f;
    for (size_t i = 0; i < n[0]; i++)
        nonzero += g[0][i] != 0.0f;
    ck_assert(nonzero > NGRAD / 2);
}
END_TEST

START_TEST(recompute_frozen_input)
{
    /* x needs no gradient: the parameters inside still get theirs */
    static float g[2][NGRAD];
    size_t a = step(PLAIN, 0, g[0], NULL), b = step(RECOMPUTE, 0, g[1], NULL);
    ck_assert_uint_eq(a, b);
    ck_assert_int_eq(memcmp(g[0], g[1], a * sizeof(float)), 0);
}
END_TEST

START_TEST(recompute_keeps_less)
{
    static float g[NGRAD];
    long long kept_plain, kept_re;
    step(PLAIN, 1, g, &kept_plain);
    step(RECOMPUTE, 1, g, &kept_re);
    /* plain keeps every intermediate ([NB,HID] several times per block);
     * recompute keeps the block outputs and the dropout-free loss ops */
    ck_assert_msg(kept_re * 2 < kept_plain, "kept %lld bytes with recompute vs %lld without", kept_re, kept_plain);
}
END_TEST

/* ---- hooks ---- */

static char events[512];
static int fail_at = -1, nevents;

static int on_acquire(void *self, const struct lathe_segment *seg)
{
    (void)self;
    char e[32];
    snprintf(e, sizeof e, "a%s ", seg->name + 4);
    strcat(events, e);
    if (nevents++ == fail_at)
        return lathe_error(LATHE_ERR, "gather failed");
    return LATHE_OK;
}

static int on_release(void *self, const struct lathe_segment *seg, int backward)
{
    (void)self;
    char e[32];
    snprintf(e, sizeof e, "r%s%s ", seg->name + 4, backward ? "b" : "");
    strcat(events, e);
    nevents++;
    return LATHE_OK;
}

static void hooks_on(void)
{
    struct lathe_segment_hooks h = {.acquire = on_acquire, .release = on_release};
    lathe_segment_set_hooks(&h);
    events[0] = 0;
    nevents = 0;
}

START_TEST(hooks_order)
{
    static float g[2][NGRAD];
    for (int m = SEGMENT; m <= RECOMPUTE; m++) {
        hooks_on();
        step((enum mode)m, 1, g[m - SEGMENT], NULL);
        /* forward in order, then backward in reverse: each block's
         * parameters are present exactly while they are read */
        ck_assert_str_eq(events, "a0 r0 a1 r1 a1 r1b a0 r0b ");
    }
    ck_assert_int_eq(memcmp(g[0], g[1], sizeof g[0]), 0);
    /* without grad (evaluation): forward only */
    hooks_on();
    lathe_no_grad_begin();
    lathe_scope_push();
    lathe_tensor *x = lathe_tensor_new2(LATHE_F32, NB, C);
    struct ctx c = {.b = &blk[0], .p = 0.0f};
    ck_assert_ptr_nonnull(lathe_segment_run(&blk[0].seg, block_fn, &c, sizeof c, x));
    lathe_scope_pop();
    lathe_no_grad_end();
    ck_assert_str_eq(events, "a0 r0 ");
    lathe_segment_set_hooks(NULL);
}
END_TEST

START_TEST(hook_failure_in_backward)
{
    for (int m = SEGMENT; m <= RECOMPUTE; m++) {
        hooks_on();
        fail_at = 4; /* the first acquire of the backward pass */
        lathe_segment_set_recompute(m == RECOMPUTE);
        lathe_scope_push();
        lathe_tensor *x = lathe_param_new("x", 2, (int64_t[]){NB, C});
        lathe_tensor *y = x;
        for (int i = 0; i < 2; i++) {
            struct ctx c = {.b = &blk[i], .p = 0.0f};
            y = lathe_segment_run(&blk[i].seg, block_fn, &c, sizeof c, y);
        }
        lathe_tensor *loss = lathe_sum(y);
        ck_assert_int_ne(lathe_backward(loss, 1.0f), LATHE_OK);
        ck_assert_msg(strstr(lathe_errmsg(), "blk.1") && strstr(lathe_errmsg(), "gather failed"), "%s",
                      lathe_errmsg());
        lathe_scope_pop();
        lathe_tensor_free(x);
        fail_at = -1;
    }
    lathe_segment_set_hooks(NULL);
    lathe_segment_set_recompute(0);
}
END_TEST

START_TEST(forward_failure_named)
{
    hooks_on();
    fail_at = 0;
    lathe_scope_push();
    lathe_tensor *x = lathe_tensor_new2(LATHE_F32, NB, C);
    struct ctx c = {.b = &blk[0], .p = 0.0f};
    ck_assert_ptr_null(lathe_segment_run(&blk[0].seg, block_fn, &c, sizeof c, x));
    ck_assert_msg(strstr(lathe_errmsg(), "segment 'blk.0'") != NULL, "%s", lathe_errmsg());
    lathe_scope_pop();
    fail_at = -1;
    lathe_segment_set_hooks(NULL);
}
END_TEST

/* a block whose recomputation differs from its first run */
static int calls;
static lathe_tensor *impure_fn(const void *c, lathe_tensor *x)
{
    (void)c;
    lathe_tensor *y = lathe_mul(x, blk[0].b1);
    return calls++ == 0 ? y : lathe_reshape(y, 2, (int64_t[]){HID / 2, 2});
}

START_TEST(recompute_impure_block)
{
    lathe_segment_set_recompute(1);
    calls = 0;
    lathe_scope_push();
    lathe_tensor *x = lathe_tensor_new1(LATHE_F32, HID);
    lathe_tensor *y = lathe_segment_run(&blk[0].seg, impure_fn, NULL, 0, x);
    ck_assert_ptr_nonnull(y);
    ck_assert_int_ne(lathe_backward(lathe_sum(y), 1.0f), LATHE_OK);
    ck_assert_msg(strstr(lathe_errmsg(), "not a pure function") != NULL, "%s", lathe_errmsg());
    lathe_scope_pop();
    lathe_segment_set_recompute(0);
}
END_TEST

START_TEST(null_arguments)
{
    lathe_error_clear();
    ck_assert_ptr_null(lathe_segment_run(NULL, block_fn, NULL, 0, NULL));
    ck_assert_msg(strstr(lathe_errmsg(), "segment") != NULL, "%s", lathe_errmsg());
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("segment");
    TCase *core = tcase_create("Core");
    tcase_add_checked_fixture(core, setup, NULL);
    tcase_add_test(core, recompute_same_gradients);
    tcase_add_test(core, recompute_frozen_input);
    tcase_add_test(core, recompute_keeps_less);
    tcase_add_test(core, hooks_order);
    suite_add_tcase(s, core);
    TCase *lim = tcase_create("Limits");
    tcase_add_checked_fixture(lim, setup, NULL);
    tcase_add_test(lim, hook_failure_in_backward);
    tcase_add_test(lim, forward_failure_named);
    tcase_add_test(lim, recompute_impure_block);
    tcase_add_test(lim, null_arguments);
    suite_add_tcase(s, lim);
    return s;
}

int main(void) { return lathe_test_run(suite()); }
