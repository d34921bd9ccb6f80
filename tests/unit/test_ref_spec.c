/* test_ref_spec.c — speculation never changes a token, on the real default
 * model: 24 Spec-Bench questions (4 per task group, tests/fixtures/
 * spec_subset.jsonl) in the chat template, greedy and seeded sampling
 * (T 0.7 and 1.0, top-p 0.9), each drafter and draft lengths 1/2/4/8,
 * adaptive and trees; every request's tokens must equal plain decoding's.
 * Requests of one configuration are verified together in shared batches.
 * Long questions are cut to their first 600 bytes to keep the test short
 * (identity does not depend on prompt length). Skips without the model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/gen.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "spec/spec.h"
#include "tok/tok.h"

#define N_Q 24
#define N_GEN 32
#define MAX_LEN 1024

static struct {
    td_gguf *g;
    td_model *m;
    td_tok *tok;
    td_pool *pool;
    int32_t *prompt[N_Q];
    size_t n_prompt[N_Q];
    char group[N_Q][32];
} R;

static int setup(void **s) {
    (void)s;
    char path[1024];
    const char *env = getenv("TANDEM_MODEL");
    if (env && *env) snprintf(path, sizeof path, "%s", env);
    else snprintf(path, sizeof path, "%s/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf", getenv("HOME"));
    td_err err;
    if (td_gguf_open(path, &R.g, &err) != TD_OK) {
        fprintf(stderr, "# model not available (%s): skipped\n", err.msg);
        return 0;
    }
    if (td_model_load(R.g, &R.m, &err) || td_tok_create(R.g, &R.tok, &err)) return -1;
    R.pool = td_pool_create(td_cpu_count());
    snprintf(path, sizeof path, "%s/tests/fixtures/spec_subset.jsonl", TD_SOURCE_DIR);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[65536];
    int i = 0;
    while (i < N_Q && fgets(line, sizeof line, f)) {
        cJSON *q = cJSON_Parse(line);
        if (!q) { fclose(f); return -1; }
        char text[601];
        snprintf(text, sizeof text, "%s", cJSON_GetArrayItem(cJSON_GetObjectItem(q, "turns"), 0)->valuestring);
        snprintf(R.group[i], sizeof R.group[i], "%s", cJSON_GetObjectItem(q, "group")->valuestring);
        /* cutting at 600 bytes may split a UTF-8 character: back off */
        size_t n = strlen(text);
        while (n > 0 && ((unsigned char)text[n - 1] & 0xC0) == 0x80) n--;
        if (n > 0 && (unsigned char)text[n - 1] >= 0xC0) n--;
        text[n] = 0;
        td_chat_msg msg = {"user", text};
        char *formatted;
        if (td_tok_chat_format(R.tok, &msg, 1, true, &formatted, &err) ||
            td_tok_encode(R.tok, formatted, strlen(formatted), false, true, &R.prompt[i], &R.n_prompt[i], &err)) {
            fprintf(stderr, "# question %d: %s\n", i, err.msg);
            fclose(f);
            return -1;
        }
        free(formatted);
        cJSON_Delete(q);
        i++;
    }
    fclose(f);
    return i == N_Q && R.pool ? 0 : -1;
}

static int teardown(void **s) {
    (void)s;
    for (int i = 0; i < N_Q; i++) free(R.prompt[i]);
    td_pool_destroy(R.pool);
    td_tok_destroy(R.tok);
    td_model_free(R.m);
    td_gguf_close(R.g);
    return 0;
}

static void plain_all(const td_sample_params *sp, int32_t *out) {
    td_kv *kv = td_kv_create(R.m, 1, MAX_LEN);
    td_ctx *ctx = td_ctx_create(R.m, 512, R.pool);
    for (int i = 0; i < N_Q; i++) {
        td_gen_params gp = {.sample = *sp, .max_tokens = N_GEN, .ignore_eos = true};
        td_gen_stats st;
        td_err err;
        td_kv_truncate(kv, 0, 0);
        assert_int_equal(td_gen_run(R.m, R.tok, ctx, kv, 0, R.prompt[i], R.n_prompt[i], &gp, NULL, NULL,
                                    out + (size_t)i * N_GEN, &st, &err), TD_OK);
    }
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
}

typedef enum { D_LOOKUP, D_NGRAM, D_RECYCLE, D_LAYERSKIP, D_ALL } dkind;
static const char *dname[] = {"lookup", "ngram", "recycle", "layerskip", "lookup+recycle+ngram"};

/* Runs all questions as one batch of requests (8 at a time) with the given
 * drafters and compares with plain decoding. */
static void check(const td_sample_params *sp, const int32_t *want, dkind kind, int32_t k, bool adaptive) {
    enum { BATCH = 8 };
    td_spec_params spp = td_spec_defaults();
    spp.draft_max = k;
    spp.adaptive = adaptive;
    td_drafter *d[3];
    int nd = 0;
    td_err err = {{0}};
    if (kind == D_LOOKUP || kind == D_ALL) d[nd++] = td_spec_lookup_create(1, 4);
    if (kind == D_RECYCLE || kind == D_ALL) d[nd++] = td_spec_recycle_create(td_model_hparams(R.m)->n_vocab, 8);
    if (kind == D_NGRAM || kind == D_ALL) d[nd++] = td_spec_ngram_create(4, BATCH);
    if (kind == D_LAYERSKIP) d[nd++] = td_spec_layerskip_create(R.m, R.pool, sp, BATCH, MAX_LEN, NULL, &err);
    for (int i = 0; i < nd; i++) assert_non_null(d[i]);
    td_kv *kv = td_kv_create(R.m, BATCH, MAX_LEN);
    td_ctx *ctx = td_ctx_create(R.m, 512, R.pool);
    int32_t got[BATCH * N_GEN];
    int64_t steps = 0, tokens = 0;
    for (int b0 = 0; b0 < N_Q; b0 += BATCH) {
        td_spec_request rq[BATCH];
        for (int i = 0; i < BATCH; i++) {
            rq[i] = (td_spec_request){.prompt = R.prompt[b0 + i], .n_prompt = R.n_prompt[b0 + i],
                                      .gen = {.sample = *sp, .max_tokens = N_GEN, .ignore_eos = true},
                                      .out_tokens = got + i * N_GEN};
            td_kv_truncate(kv, i, 0);
        }
        int rc = td_spec_run(R.m, R.tok, ctx, kv, rq, BATCH, d, nd, &spp, &err);
        if (rc) fprintf(stderr, "# %s\n", err.msg);
        assert_int_equal(rc, TD_OK);
        for (int i = 0; i < BATCH; i++) {
            if (memcmp(got + i * N_GEN, want + (size_t)(b0 + i) * N_GEN, N_GEN * sizeof(int32_t)) != 0)
                fprintf(stderr, "# %s k=%d T=%.1f: question %d (%s) differs\n", dname[kind], k,
                        (double)sp->temperature, b0 + i, R.group[b0 + i]);
            assert_memory_equal(got + i * N_GEN, want + (size_t)(b0 + i) * N_GEN, N_GEN * sizeof(int32_t));
            steps += rq[i].spec.n_steps;
            tokens += rq[i].spec.n_tokens;
        }
    }
    fprintf(stderr, "# T=%.1f %-22s k=%d%s: 24/24 identical, %.2f tokens per target pass\n", (double)sp->temperature,
            dname[kind], k, adaptive ? " adaptive" : "", (double)tokens / (double)steps);
    for (int i = 0; i < nd; i++) td_drafter_destroy(d[i]);
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
}

static void greedy_every_drafter(void **s) {
    (void)s;
    if (!R.m) skip();
    td_sample_params sp = td_sample_defaults();
    int32_t *want = malloc((size_t)N_Q * N_GEN * sizeof *want);
    plain_all(&sp, want);
    check(&sp, want, D_LOOKUP, 1, false);
    check(&sp, want, D_NGRAM, 2, false);
    check(&sp, want, D_RECYCLE, 8, false);
    check(&sp, want, D_LAYERSKIP, 4, false);
    check(&sp, want, D_ALL, 16, true);
    free(want);
}

static void seeded_sampling(void **s) {
    (void)s;
    if (!R.m) skip();
    int32_t *want = malloc((size_t)N_Q * N_GEN * sizeof *want);
    static const float temps[2] = {0.7f, 1.0f};
    for (int t = 0; t < 2; t++) {
        td_sample_params sp = td_sample_defaults();
        sp.temperature = temps[t];
        sp.top_p = 0.9f;
        sp.seed = 11 + (uint64_t)t;
        plain_all(&sp, want);
        check(&sp, want, t == 0 ? D_LOOKUP : D_RECYCLE, t == 0 ? 4 : 2, false);
        check(&sp, want, D_ALL, 8, true);
    }
    free(want);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(greedy_every_drafter),
        cmocka_unit_test(seeded_sampling),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
