/* test_ref_llamacpp.c — tandem on the real default model against fixtures
 * produced by llama.cpp (tests/fixtures/make_fixtures.py): token ids of the
 * tokenizer cases, teacher-forced argmax and perplexity over 2,048 tokens of
 * English, and greedy chat continuations up to the first near-tie.
 * Skips (not fails) when the model file is absent; CI fetches it first.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/gen.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "tok/tok.h"

/* Reference margins (top1 - top2 logit) below this count as near-ties. */
#define NEAR_TIE 0.05
/* tandem and llama.cpp agree to ~1e-7 relative per layer, but both round
 * activations to 8 bits before every matmul, and an ulp-level difference
 * (summation order, exp approximations) occasionally flips one rounding;
 * through 30 layers that grows to logit noise of a few hundredths (measured
 * layer by layer, see docs/benchmarks.md). Positions whose reference margin
 * is below CLOSE_CALL may therefore legitimately go either way; a real bug
 * (wrong rope, head mapping, quant layout) disagrees at large margins. */
#define CLOSE_CALL 0.5

typedef struct engine {
    td_gguf *g;
    td_model *m;
    td_tok *tok;
    td_pool *pool;
} engine;

static engine E;

static int setup(void **state) {
    (void)state;
    char path[1024];
    const char *env = getenv("TANDEM_MODEL");
    if (env && *env) snprintf(path, sizeof path, "%s", env);
    else snprintf(path, sizeof path, "%s/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf", getenv("HOME"));
    td_err err;
    if (td_gguf_open(path, &E.g, &err) != TD_OK) {
        /* under CI a missing model is a broken set-up: fail, never pass green */
        const char *ci = getenv("CI");
        if (ci && !strcmp(ci, "true")) {
            fprintf(stderr, "# model not available (%s): FAIL under CI=true\n", err.msg);
            return -1;
        }
        fprintf(stderr, "# model not available (%s): reference tests skipped\n", err.msg);
        return 0;
    }
    if (td_model_load(E.g, &E.m, &err) || td_tok_create(E.g, &E.tok, &err)) {
        fprintf(stderr, "# %s\n", err.msg);
        return -1;
    }
    E.pool = td_pool_create(td_cpu_count(), NULL);
    return E.pool ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    td_pool_destroy(E.pool);
    td_tok_destroy(E.tok);
    td_model_free(E.m);
    td_gguf_close(E.g);
    return 0;
}

static cJSON *load_fixture(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/%s", TD_SOURCE_DIR, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    buf[got] = 0;
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    return j;
}

static int32_t *int_array(const cJSON *a, int *n) {
    *n = cJSON_GetArraySize(a);
    int32_t *v = malloc(((size_t)*n + 1) * sizeof *v);
    int i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, a) v[i++] = (int32_t)x->valueint;
    return v;
}

static void tokenizer_matches_llamacpp(void **state) {
    (void)state;
    if (!E.m) skip();
    cJSON *fx = load_fixture("tokenize.json");
    assert_non_null(fx);
    const cJSON *c;
    int total = 0, same = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(fx, "cases")) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        bool special = cJSON_IsTrue(cJSON_GetObjectItem(c, "parse_special"));
        int n_want;
        int32_t *want = int_array(cJSON_GetObjectItem(c, "ids"), &n_want);
        int32_t *got = NULL;
        size_t n_got = 0;
        td_err err;
        assert_int_equal(td_tok_encode(E.tok, text, strlen(text), false, special, &got, &n_got, &err), TD_OK);
        bool ok = (int)n_got == n_want && (n_got == 0 || memcmp(got, want, n_got * sizeof *got) == 0);
        if (!ok) fprintf(stderr, "# tokenize mismatch (special=%d): %s\n", special, text);
        same += ok;
        total++;
        free(got);
        free(want);
    }
    fprintf(stderr, "# tokenizer: %d/%d cases identical to llama.cpp\n", same, total);
    assert_true(total >= 40);
    assert_int_equal(same, total);
    cJSON_Delete(fx);
}

/* Scores the fixture's text with the given matmul order; asserts the
 * agreement that order promises. */
static void teacher_forced(td_numerics numerics) {
    cJSON *fx = load_fixture("logits_english.json");
    assert_non_null(fx);
    int n, n_arg;
    int32_t *ids = int_array(cJSON_GetObjectItem(fx, "ids"), &n);
    int32_t *ref_arg = int_array(cJSON_GetObjectItem(fx, "argmax"), &n_arg);
    const cJSON *margins = cJSON_GetObjectItem(fx, "margin");
    const cJSON *ref_lp = cJSON_GetObjectItem(fx, "logprob_next");
    double lp_diff = 0, lp_diff_max = 0;
    double ref_ppl = cJSON_GetObjectItem(fx, "perplexity")->valuedouble;
    assert_true(n >= 2000);
    assert_int_equal(n_arg, n - 1);

    int32_t V = td_model_hparams(E.m)->n_vocab, B = 256;
    td_kv *kv = td_kv_create(E.m, 1, n, NULL);
    td_ctx *ctx = td_ctx_create(E.m, B, E.pool, NULL);
    if (ctx) td_ctx_set_numerics(ctx, numerics);
    float *lg = malloc((size_t)B * V * sizeof(float));
    td_row *rows = malloc((size_t)B * sizeof *rows);
    assert_true(kv && ctx && lg && rows);
    int agree = 0, near_tie_misses = 0;
    double nll = 0;
    td_err err;
    for (int b0 = 0; b0 < n; b0 += B) {
        int k = n - b0 < B ? n - b0 : B;
        for (int i = 0; i < k; i++) rows[i] = (td_row){0, b0 + i, ids[b0 + i], true, false, 0};
        assert_int_equal(td_model_forward(ctx, kv, rows, k, lg, &err), TD_OK);
        for (int i = 0; i < k && b0 + i < n - 1; i++) {
            const float *l = lg + (size_t)i * V;
            int32_t am = 0;
            float mx = l[0];
            for (int32_t v = 1; v < V; v++) if (l[v] > mx) { mx = l[v]; am = v; }
            double sum = 0;
            for (int32_t v = 0; v < V; v++) sum += exp((double)l[v] - mx);
            double lp = (double)l[ids[b0 + i + 1]] - mx - log(sum);
            nll -= lp;
            double dlp = fabs(lp - cJSON_GetArrayItem(ref_lp, b0 + i)->valuedouble);
            lp_diff += dlp;
            if (dlp > lp_diff_max) lp_diff_max = dlp;
            if (am == ref_arg[b0 + i]) agree++;
            else if (cJSON_GetArrayItem(margins, b0 + i)->valuedouble < NEAR_TIE) near_tie_misses++;
        }
    }
    double ppl = exp(nll / (n - 1));
    double rate = (double)agree / (n - 1);
    const char *mode = td_numerics_name(numerics);
    fprintf(stderr, "# logits (%s): |log p(next) - llama.cpp's| mean %.6f, max %.6f\n", mode, lp_diff / (n - 1),
            lp_diff_max);
    fprintf(stderr, "# logits (%s): argmax identical at %d/%d positions (%.2f%%; %d of the rest are near-ties), "
                    "perplexity %.4f vs llama.cpp %.4f (%+.3f%%)\n",
            mode, agree, n - 1, 100 * rate, near_tie_misses, ppl, ref_ppl, 100 * (ppl / ref_ppl - 1));
    if (numerics == TD_NUMERICS_REFERENCE) {
        /* llama.cpp's operation order: its logits, up to the fixture's
         * rounding of log-probabilities (issue target: 99.5 % argmax) */
        assert_true(rate >= 0.995);
        assert_true(lp_diff_max < 1e-4);
    } else {
        /* another summation order: last-bit noise that flips close calls
         * (about 4 % of positions; llama.cpp's own flash-attention path
         * differs from its default as much, see reference_sensitivity.py) */
        assert_true(rate >= 0.95);
        assert_true(lp_diff / (n - 1) < 0.1);
    }
    assert_true(fabs(ppl / ref_ppl - 1) < 0.01);
    free(rows); free(lg); free(ids); free(ref_arg);
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
    cJSON_Delete(fx);
}

static void teacher_forced_logits_match(void **state) {
    (void)state;
    if (!E.m) skip();
    teacher_forced(TD_NUMERICS_REFERENCE);
}

static void teacher_forced_logits_close_fast(void **state) {
    (void)state;
    if (!E.m) skip();
    teacher_forced(TD_NUMERICS_FAST);
}

/* Greedy continuations, prompt in one pass then one token per pass, as the
 * fixture was made. */
static void greedy_chat(td_numerics numerics) {
    cJSON *fx = load_fixture("greedy_chat.json");
    assert_non_null(fx);
    const cJSON *c;
    int prompts = 0, exact = 0, checked_tokens = 0, matched = 0, before_tie = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(fx, "runs")) {
        int n_prompt, n_want;
        int32_t *prompt = int_array(cJSON_GetObjectItem(c, "prompt_ids"), &n_prompt);
        int32_t *want = int_array(cJSON_GetObjectItem(c, "generated_ids"), &n_want);
        const cJSON *margins = cJSON_GetObjectItem(c, "margins");
        int32_t *got = calloc((size_t)n_want, sizeof *got);
        td_kv *kv = td_kv_create(E.m, 1, n_prompt + n_want + 1, NULL);
        td_ctx *ctx = td_ctx_create(E.m, 512, E.pool, NULL);
        assert_non_null(ctx);
        td_ctx_set_numerics(ctx, numerics);
        td_gen_params gp = {.sample = td_sample_defaults(), .max_tokens = n_want, .ignore_eos = true};
        td_gen_stats st;
        td_err err;
        assert_int_equal(td_gen_run(E.m, E.tok, ctx, kv, 0, prompt, (size_t)n_prompt, &gp, NULL, NULL, got, &st, &err),
                         TD_OK);
        /* The first divergence, if any, must come at a close call of the
         * reference; before it every token is identical by construction. */
        int first_diff = n_want;
        for (int i = 0; i < n_want; i++)
            if (got[i] != want[i]) { first_diff = i; break; }
        int first_tie = n_want;
        for (int i = 0; i < n_want; i++)
            if (cJSON_GetArrayItem(margins, i)->valuedouble < NEAR_TIE) { first_tie = i; break; }
        if (first_diff < n_want) {
            double m = cJSON_GetArrayItem(margins, first_diff)->valuedouble;
            fprintf(stderr, "# prompt %d (%s): identical for %d tokens; first difference where llama.cpp's margin is %.3f\n",
                    prompts, td_numerics_name(numerics), first_diff, m);
            assert_true(m < CLOSE_CALL);
        }
        matched += first_diff;
        if (first_tie <= first_diff) before_tie++;
        checked_tokens += n_want;
        exact += memcmp(got, want, (size_t)n_want * sizeof *got) == 0;
        prompts++;
        td_ctx_destroy(ctx);
        td_kv_destroy(kv);
        free(got); free(want); free(prompt);
    }
    fprintf(stderr, "# greedy chat (%s): %d/%d continuations identical over all 64 tokens; %d of %d tokens before the "
                    "first difference; %d/%d identical up to their first near-tie (margin < %.2f)\n",
            td_numerics_name(numerics), exact, prompts, matched, checked_tokens, before_tie, prompts, NEAR_TIE);
    assert_true(prompts >= 8);
    /* llama.cpp's order, its one-token attention included: its tokens */
    if (numerics == TD_NUMERICS_LLAMACPP) assert_int_equal(exact, prompts);
    cJSON_Delete(fx);
}

static void greedy_chat_matches(void **state) {
    (void)state;
    if (!E.m) skip();
    greedy_chat(TD_NUMERICS_LLAMACPP);
}

/* Batch invariant: the prompt's pass and the one-token passes share one
 * attention order, so from the first close call on the tokens may part
 * from llama.cpp's (which switches order between the two). */
static void greedy_chat_close_reference(void **state) {
    (void)state;
    if (!E.m) skip();
    greedy_chat(TD_NUMERICS_REFERENCE);
}

static void greedy_chat_close_fast(void **state) {
    (void)state;
    if (!E.m) skip();
    greedy_chat(TD_NUMERICS_FAST);
}


int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tokenizer_matches_llamacpp),
        cmocka_unit_test(teacher_forced_logits_match),
        cmocka_unit_test(teacher_forced_logits_close_fast),
        cmocka_unit_test(greedy_chat_matches),
        cmocka_unit_test(greedy_chat_close_reference),
        cmocka_unit_test(greedy_chat_close_fast),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
