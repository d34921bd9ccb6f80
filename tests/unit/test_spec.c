/* test_spec.c — speculative decoding on a tiny random model: every drafter,
 * draft lengths 1..8, adaptive and fixed, greedy and seeded sampling, single
 * and batched requests all give exactly plain decoding's tokens; the opt-in
 * rejection mode keeps the sampling distribution (two-sample chi-square) and
 * the same test fails when its correction step is removed. Every drafter
 * must also really draft (a drafter that stops proposing passes identity).
 * Prefix reuse: a sequence reopened over the warm cache of an earlier one
 * (prompt + tokens made by speculative steps) verifies bit for bit like a
 * cold open of the same prompt.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gen/gen.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "spec/spec.h"
#include "tok/tok.h"

static struct {
    char dir[64], path[128];
    td_gguf *g;
    td_model *m;
    td_tok *tok;
    td_pool *pool;
    td_numerics numerics; /* of the target's passes, plain and speculative */
} T;

static int setup(void **s) {
    (void)s;
    snprintf(T.dir, sizeof T.dir, "/tmp/td_spec_XXXXXX");
    if (!mkdtemp(T.dir)) return -1;
    snprintf(T.path, sizeof T.path, "%s/tiny.gguf", T.dir);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s/td-mktiny %s --type Q8_0 > /dev/null", TD_BINARY_DIR, T.path);
    if (system(cmd) != 0) return -1;
    td_err err;
    if (td_gguf_open(T.path, &T.g, &err) || td_model_load(T.g, &T.m, &err) || td_tok_create(T.g, &T.tok, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    T.pool = td_pool_create(2, NULL);
    T.numerics = TD_NUMERICS_FAST;
    return T.pool ? 0 : -1;
}

static int teardown(void **s) {
    (void)s;
    td_pool_destroy(T.pool);
    td_tok_destroy(T.tok);
    td_model_free(T.m);
    td_gguf_close(T.g);
    unlink(T.path);
    rmdir(T.dir);
    return 0;
}

/* A repetitive prompt gives lookup and n-gram drafters something to match. */
static const int32_t prompt[] = {40, 41, 42, 43, 44, 45, 40, 41, 42, 43, 44, 45, 40, 41, 42, 43};
#define N_PROMPT ((size_t)(sizeof prompt / sizeof prompt[0]))
#define N_GEN 24

static void plain(const td_sample_params *sp, int32_t *out, int32_t n_gen) {
    td_kv *kv = td_kv_create(T.m, 1, 128, NULL);
    td_ctx *ctx = td_ctx_create(T.m, 64, T.pool, NULL);
    td_ctx_set_numerics(ctx, T.numerics);
    td_gen_params gp = {.sample = *sp, .max_tokens = n_gen, .ignore_eos = true};
    td_gen_stats st;
    td_err err;
    assert_int_equal(td_gen_run(T.m, T.tok, ctx, kv, 0, prompt, N_PROMPT, &gp, NULL, NULL, out, &st, &err), TD_OK);
    assert_int_equal(st.n_generated, n_gen);
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
}

static void speculative(const td_sample_params *sp, td_drafter **d, int n_d, const td_spec_params *spp,
                        int32_t n_reqs, int32_t *out, int32_t n_gen, td_spec_stats *stats) {
    td_kv *kv = td_kv_create(T.m, n_reqs, 128, NULL);
    td_ctx *ctx = td_ctx_create(T.m, 64 * n_reqs + 64, T.pool, NULL);
    td_ctx_set_numerics(ctx, T.numerics);
    td_spec_request rq[4];
    for (int32_t i = 0; i < n_reqs; i++) {
        rq[i] = (td_spec_request){.prompt = prompt, .n_prompt = N_PROMPT,
                                  .gen = {.sample = *sp, .max_tokens = n_gen, .ignore_eos = true},
                                  .out_tokens = out + (size_t)i * n_gen};
        rq[i].gen.sample.seed = sp->seed + (uint64_t)i;
    }
    td_err err = {0};
    int rc = td_spec_run(T.m, T.tok, ctx, kv, rq, n_reqs, d, n_d, spp, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, TD_OK);
    if (stats) *stats = rq[0].spec;
    for (int32_t i = 0; i < n_reqs; i++) assert_int_equal(rq[i].stats.n_generated, n_gen);
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
}

typedef td_drafter *(*maker)(const td_sample_params *sp);
static td_drafter *mk_lookup(const td_sample_params *sp) { (void)sp; return td_spec_lookup_create(1, 4, NULL); }
static td_drafter *mk_ngram(const td_sample_params *sp) { (void)sp; return td_spec_ngram_create(3, 4, NULL); }
static td_drafter *mk_recycle(const td_sample_params *sp) { (void)sp; return td_spec_recycle_create(td_model_hparams(T.m)->n_vocab, 4, NULL); }
static td_drafter *mk_layerskip(const td_sample_params *sp) {
    uint8_t skip[8] = {0, 1, 0, 0, 0, 0, 0, 0};
    return td_spec_layerskip_create(T.m, T.pool, sp, 4, 128, skip, NULL);
}
static td_drafter *mk_layerskip_auto(const td_sample_params *sp) {
    return td_spec_layerskip_create(T.m, T.pool, sp, 4, 128, NULL, NULL);
}
/* The target as its own draft model: drafts are then always right, which
 * exercises long accepted runs and the cache compaction after them. */
static td_drafter *mk_model(const td_sample_params *sp) { return td_spec_model_drafter_create(T.m, T.pool, sp, 4, 128, NULL); }

static const struct { const char *name; maker make; } drafters[] = {
    {"lookup", mk_lookup}, {"ngram", mk_ngram}, {"recycle", mk_recycle},
    {"layerskip", mk_layerskip}, {"layerskip-auto", mk_layerskip_auto}, {"model", mk_model},
};
#define N_DRAFTERS ((int)(sizeof drafters / sizeof drafters[0]))

static void check_identical(const td_sample_params *sp) {
    int32_t want[N_GEN], got[4 * N_GEN];
    plain(sp, want, N_GEN);
    /* draft lengths 1, 2, 4, 8 rotate over the drafters; each also runs adaptive */
    static const int ks[] = {1, 2, 4, 8};
    for (int d = 0; d < N_DRAFTERS; d++) {
        for (int ki = 0; ki < 2; ki++) {
            td_spec_params spp = td_spec_defaults();
            spp.adaptive = ki == 1;
            spp.draft_max = ki == 1 ? 8 : ks[d % 4];
            td_drafter *dr = drafters[d].make(sp);
            assert_non_null(dr);
            td_spec_stats st;
            speculative(sp, &dr, 1, &spp, 1, got, N_GEN, &st);
            if (memcmp(got, want, sizeof want) != 0)
                fprintf(stderr, "# %s k=%d: tokens differ from plain decoding\n", drafters[d].name, spp.draft_max);
            assert_memory_equal(got, want, sizeof want);
            fprintf(stderr, "# %s k=%d%s: %lld of %lld drafted accepted\n", drafters[d].name, spp.draft_max,
                    spp.adaptive ? " adaptive" : "", (long long)st.n_accepted, (long long)st.n_drafted);
            /* identity alone passes a drafter that stopped proposing: each
             * must draft here (the automatic layer-skip may find that no
             * skip set pays on this model, by design), and the target as
             * its own draft model must have every draft accepted */
            if (strcmp(drafters[d].name, "layerskip-auto") != 0) assert_true(st.n_drafted > 0);
            if (strcmp(drafters[d].name, "model") == 0) assert_true(st.n_accepted == st.n_drafted);
            td_drafter_destroy(dr);
        }
    }
    /* all drafters at once: proposals merged into one tree */
    td_drafter *all[N_DRAFTERS];
    for (int d = 0; d < N_DRAFTERS; d++) all[d] = drafters[d].make(sp);
    td_spec_params spp = td_spec_defaults();
    spp.draft_max = 16;
    td_spec_stats st;
    speculative(sp, all, N_DRAFTERS, &spp, 1, got, N_GEN, &st);
    assert_memory_equal(got, want, sizeof want);
    fprintf(stderr, "# combined drafters: %.2f tokens per target pass\n", (double)st.n_tokens / st.n_steps);
    assert_true(st.n_accepted > 0); /* the model drafter alone guarantees acceptances */
    for (int d = 0; d < N_DRAFTERS; d++) td_drafter_destroy(all[d]);
}

static void greedy_identical(void **s) {
    (void)s;
    td_sample_params sp = td_sample_defaults();
    check_identical(&sp);
}

/* The reference order is batch invariant too (its matmuls are slower per
 * row, not different per batch), so speculation reproduces it as well. */
static void greedy_identical_reference(void **s) {
    (void)s;
    td_sample_params sp = td_sample_defaults();
    T.numerics = TD_NUMERICS_REFERENCE;
    check_identical(&sp);
    T.numerics = TD_NUMERICS_FAST;
}

static void seeded_sampling_identical(void **s) {
    (void)s;
    static const float temps[] = {0.7f, 1.0f};
    for (int t = 0; t < 2; t++) {
        td_sample_params sp = td_sample_defaults();
        sp.temperature = temps[t];
        sp.top_p = 0.9f;
        sp.seed = 1000 + (uint64_t)t;
        check_identical(&sp);
    }
}

/* Several requests verified in one forward batch give each request the
 * tokens it gets alone. */
static void batched_requests_identical(void **s) {
    (void)s;
    td_sample_params sp = td_sample_defaults();
    sp.temperature = 0.8f;
    sp.seed = 77;
    int32_t got[4 * N_GEN], want[N_GEN];
    td_drafter *d[2] = {mk_lookup(&sp), mk_model(&sp)};
    td_spec_params spp = td_spec_defaults();
    speculative(&sp, d, 2, &spp, 4, got, N_GEN, NULL);
    for (int i = 0; i < 4; i++) {
        td_sample_params one = sp;
        one.seed = sp.seed + (uint64_t)i;
        plain(&one, want, N_GEN);
        assert_memory_equal(got + i * N_GEN, want, sizeof want);
    }
    td_drafter_destroy(d[0]);
    td_drafter_destroy(d[1]);
}

/* The step-by-step session: requests join a running batch at different
 * steps (each with its own seed and drafter state), one is cancelled
 * midway, and each finished one has plain decoding's tokens. The local
 * target also refuses what a remote caller could get wrong: a verify twice
 * without commit, a commit off the walk, an unknown sequence. */
/* Opens seq on t with prompt, verifies a 4-node chain, returns the node results. */
static void open_and_verify(td_target *t, int32_t seq, const int32_t *p, size_t n, bool reuse, td_node_result *nodes) {
    td_sample_params sp = td_sample_defaults();
    sp.temperature = 0.7f;
    sp.seed = 99;
    td_target_seq_params tp = {.sample = sp, .max_new_tokens = 8, .n_top = 4, .n_logprobs = 3, .reuse_prefix = reuse};
    td_err err = {0};
    assert_int_equal(t->ops->open(t, seq, &tp, p, n, &err), TD_OK);
    td_draft chain = {.n = 4, .token = {40, 41, 42, 43}, .parent = {-1, 0, 1, 2}};
    td_verify_item it = {.seq = seq, .tree = &chain, .nodes = nodes};
    assert_int_equal(t->ops->verify(t, &it, 1, NULL, &err), TD_OK);
}

static void prefix_reuse_is_exact(void **s) {
    (void)s;
    td_sample_params sp = td_sample_defaults();
    sp.temperature = 0.7f;
    sp.seed = 7;
    td_err err = {0};
    td_kv *kv = td_kv_create(T.m, 2, 128, NULL);
    td_ctx *ctx = td_ctx_create(T.m, 64, T.pool, NULL);
    td_ctx_set_numerics(ctx, T.numerics);
    td_target *t = td_spec_target_local_create(T.m, ctx, kv, &err);
    assert_non_null(t);
    /* turn 1: generated by speculative steps, so part of the warm cache was
     * written by tree passes and compacted */
    td_drafter *d[1] = {mk_model(&sp)};
    td_spec_params spp = td_spec_defaults();
    td_spec_session *ss = td_spec_session_create(T.tok, td_model_hparams(T.m)->n_vocab, t, d, 1, &spp, 1, 64, 128, &err);
    assert_non_null(ss);
    int32_t gen1[N_GEN];
    td_spec_request rq = {.prompt = prompt, .n_prompt = N_PROMPT, .out_tokens = gen1, .n_logprobs = -1,
                          .gen = {.sample = sp, .max_tokens = N_GEN, .ignore_eos = true}};
    assert_int_equal(td_spec_session_add(ss, 0, &rq, &err), TD_OK);
    while (td_spec_session_step(ss, &err) > 0) {}
    assert_int_equal(rq.stats.n_generated, N_GEN);
    assert_true(rq.spec.n_accepted > 0);
    td_spec_session_destroy(ss);
    assert_int_equal(td_spec_target_local_open_seqs(t), 0);

    /* turn 2 = turn 1's prompt and answer, plus a new message */
    int32_t turn2[N_PROMPT + N_GEN + 3];
    memcpy(turn2, prompt, sizeof prompt);
    memcpy(turn2 + N_PROMPT, gen1, sizeof gen1);
    turn2[N_PROMPT + N_GEN] = 50, turn2[N_PROMPT + N_GEN + 1] = 51, turn2[N_PROMPT + N_GEN + 2] = 52;
    size_t n2 = N_PROMPT + N_GEN + 3;
    /* the prompt and the answer's tokens that were committed (the last
     * step's were verified but not committed when the request ended) */
    int32_t held = 0;
    int32_t reuse = t->ops->reusable(t, 0, turn2, n2, &held);
    assert_true(held >= reuse);
    assert_true(reuse > (int32_t)N_PROMPT + 8 && reuse <= (int32_t)(N_PROMPT + N_GEN - 1));
    assert_int_equal(t->ops->reusable(t, 1, turn2, n2, &held), 0); /* never used */
    assert_int_equal(held, 0);
    int32_t other[3] = {prompt[0] + 1, 2, 3};
    assert_int_equal(t->ops->reusable(t, 0, other, 3, NULL), 0);
    td_node_result warm[5] = {0}, cold[5] = {0}, plain_open[5] = {0};
    open_and_verify(t, 0, turn2, n2, true, warm);
    assert_int_equal(td_kv_seq_len(kv, 0), (int32_t)n2 - 1 + 5); /* the cache and the verified tree */
    t->ops->release(t, 0);

    /* the same prompt on a fresh cache, and on the warm one with reuse off */
    td_kv *kv2 = td_kv_create(T.m, 1, 128, NULL);
    td_target *t2 = td_spec_target_local_create(T.m, ctx, kv2, &err);
    assert_non_null(t2);
    open_and_verify(t2, 0, turn2, n2, false, cold);
    open_and_verify(t, 0, turn2, n2, false, plain_open);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(warm[i].sample, cold[i].sample);
        assert_int_equal(warm[i].n_top, cold[i].n_top);
        assert_memory_equal(warm[i].top, cold[i].top, (size_t)cold[i].n_top * sizeof(int32_t));
        assert_int_equal(warm[i].n_alt, cold[i].n_alt);
        assert_memory_equal(warm[i].alt_id, cold[i].alt_id, (size_t)cold[i].n_alt * sizeof(int32_t));
        assert_memory_equal(warm[i].alt_logprob, cold[i].alt_logprob, (size_t)cold[i].n_alt * sizeof(float));
        assert_memory_equal(&warm[i].logprob, &cold[i].logprob, sizeof(float)); /* bits, not a tolerance */
        assert_memory_equal(&plain_open[i].logprob, &cold[i].logprob, sizeof(float));
    }
    t->ops->release(t, 0);
    td_target_destroy(t2);
    td_kv_destroy(kv2);
    td_target_destroy(t);
    td_drafter_destroy(d[0]);
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
}

/* What a GPU verify pass asks for (seeded picks from summaries,
 * observations, logprobs from scores), asked of a CPU pass and worked out
 * from its logits: the same samples, paths, observations and logprobs, bit
 * for bit, as the CPU's own way, greedy and seeded, with and without
 * filters, for 0, 3 and 20 alternatives. */
static void device_style_verify_is_the_same(void **s) {
    (void)s;
    td_err err = {0};
    td_ctx *ctx = td_ctx_create(T.m, 64, T.pool, NULL);
    td_ctx_set_numerics(ctx, T.numerics);
    const td_draft arbitrary = {.n = 6, .token = {40, 41, 42, 43, 44, 45}, .parent = {-1, 0, 1, -1, 3, 0}};
    /* rejection mode tests first children: greedy tokens there, so that
     * some are accepted */
    td_sample_params gp = td_sample_defaults();
    int32_t g[3];
    plain(&gp, g, 3);
    const td_draft likely = {.n = 5, .token = {g[0], g[1], g[2], 40, 41}, .parent = {-1, 0, 1, -1, 0}};
    int rejection_paths = 0, rejection_stops = 0;
    for (int run = 0; run < 5 + 5 * 12; run++) {
        const int cfg = run < 5 ? run : 5 + (run - 5) % 5; /* rejection's configurations over 12 seeds */
        td_sample_params sp = td_sample_defaults();
        if (cfg >= 1) sp.temperature = 0.7f, sp.seed = 31 + (uint64_t)run;
        if (cfg == 2 || cfg == 6) sp.top_k = 20, sp.top_p = 0.9f, sp.min_p = 0.05f;
        if (cfg == 4 || cfg == 7) sp.temperature = 1.5f;
        if (cfg == 8) sp.temperature = 0.0f;
        if (cfg == 9) sp.temperature = 0.3f;
        td_target_seq_params tp = {.sample = sp, .max_new_tokens = 8, .n_top = cfg == 3 ? 0 : 4,
                                   .n_logprobs = cfg == 0 ? 3 : cfg == 3 ? -1 : cfg == 4 ? 20 : cfg == 7 ? 5 : 0};
        /* 5-9: rejection mode (9 without its correction) */
        if (cfg >= 5) tp.mode = TD_SPEC_REJECTION;
        tp.test_skip_residual = cfg == 9;
        const td_draft tree = cfg >= 5 ? likely : arbitrary;
        td_node_result got[2][7];
        int32_t path[2][TD_DRAFT_MAX], n_path[2];
        for (int way = 0; way < 2; way++) {
            td_kv *kv = td_kv_create(T.m, 1, 128, NULL);
            td_target *t = td_spec_target_local_create(T.m, ctx, kv, &err);
            assert_non_null(t);
            td_spec_target_local_device_style(t, way == 1);
            assert_int_equal(t->ops->open(t, 0, &tp, prompt, N_PROMPT, &err), TD_OK);
            memset(got[way], 0, sizeof got[way]);
            td_verify_item it = {.seq = 0, .tree = &tree, .nodes = got[way]};
            assert_int_equal(t->ops->verify(t, &it, 1, NULL, &err), TD_OK);
            n_path[way] = it.n_path;
            memcpy(path[way], it.path, sizeof it.path);
            td_target_destroy(t);
            td_kv_destroy(kv);
        }
        assert_int_equal(n_path[1], n_path[0]);
        assert_memory_equal(path[1], path[0], (size_t)n_path[0] * sizeof(int32_t));
        if (cfg >= 5) rejection_paths += n_path[0], rejection_stops += n_path[0] < 3;
        for (int i = 0; i <= tree.n; i++) {
            const td_node_result *a = &got[0][i], *b = &got[1][i];
            assert_int_equal(b->sample, a->sample);
            assert_int_equal(b->n_top, a->n_top);
            if (a->n_top > 0) assert_memory_equal(b->top, a->top, (size_t)a->n_top * sizeof(int32_t));
            assert_memory_equal(&b->logprob, &a->logprob, sizeof(float));
            assert_int_equal(b->n_alt, a->n_alt);
            assert_memory_equal(b->alt_id, a->alt_id, (size_t)a->n_alt * sizeof(int32_t));
            assert_memory_equal(b->alt_logprob, a->alt_logprob, (size_t)a->n_alt * sizeof(float));
        }
    }
    /* both verdicts came up in rejection mode */
    fprintf(stderr, "# rejection: %d nodes accepted, %d walks stopped early\n", rejection_paths, rejection_stops);
    assert_true(rejection_paths > 0);
    assert_true(rejection_stops > 0);
    td_ctx_destroy(ctx);
}

static void session_requests_join_and_leave(void **s) {
    (void)s;
    td_sample_params sp = td_sample_defaults();
    sp.temperature = 0.7f;
    td_kv *kv = td_kv_create(T.m, 4, 128, NULL);
    td_ctx *ctx = td_ctx_create(T.m, 64, T.pool, NULL);
    td_ctx_set_numerics(ctx, T.numerics);
    td_err err = {0};
    td_target *t = td_spec_target_local_create(T.m, ctx, kv, &err);
    assert_non_null(t);
    td_drafter *d[2] = {mk_lookup(&sp), mk_model(&sp)};
    td_spec_params spp = td_spec_defaults();
    td_spec_session *ss = td_spec_session_create(T.tok, td_model_hparams(T.m)->n_vocab, t, d, 2, &spp, 4, 64, 128, &err);
    assert_non_null(ss);
    int32_t got[4][N_GEN];
    td_spec_request rq[4];
    for (int i = 0; i < 4; i++)
        rq[i] = (td_spec_request){.prompt = prompt, .n_prompt = N_PROMPT, .out_tokens = got[i], .n_logprobs = -1,
                                  .gen = {.sample = sp, .max_tokens = N_GEN, .ignore_eos = true}};
    for (int i = 0; i < 4; i++) rq[i].gen.sample.seed = 500 + (uint64_t)i;
    /* request 0 alone for two steps, then 1 and 2 join, then 3 joins and 2 is cancelled */
    assert_int_equal(td_spec_session_add(ss, 0, &rq[0], &err), TD_OK);
    assert_true(td_spec_session_step(ss, &err) >= 0);
    assert_true(td_spec_session_step(ss, &err) >= 0);
    assert_int_equal(td_spec_session_add(ss, 1, &rq[1], &err), TD_OK);
    assert_int_equal(td_spec_session_add(ss, 2, &rq[2], &err), TD_OK);
    assert_int_equal(td_spec_session_add(ss, 1, &rq[3], &err), TD_E_ARG); /* busy */
    assert_true(td_spec_session_step(ss, &err) >= 0);
    assert_int_equal(td_spec_session_add(ss, 3, &rq[3], &err), TD_OK);
    td_spec_session_cancel(ss, 2);
    assert_false(td_spec_session_active(ss, 2));
    assert_int_equal(rq[2].stats.stop, TD_STOP_CALLER);
    int left;
    while ((left = td_spec_session_step(ss, &err)) > 0) {}
    assert_int_equal(left, 0);
    assert_int_equal(td_spec_target_local_open_seqs(t), 0); /* every sequence released */
    for (int i = 0; i < 4; i++) {
        if (i == 2) continue;
        int32_t want[N_GEN];
        td_sample_params one = sp;
        one.seed = 500 + (uint64_t)i;
        plain(&one, want, N_GEN);
        assert_int_equal(rq[i].stats.n_generated, N_GEN);
        assert_memory_equal(got[i], want, sizeof want);
    }
    /* a canceled request's tokens so far are a prefix of its plain run */
    int32_t want2[N_GEN];
    td_sample_params two = sp;
    two.seed = 502;
    plain(&two, want2, N_GEN);
    assert_true(rq[2].stats.n_generated < N_GEN);
    assert_memory_equal(got[2], want2, (size_t)rq[2].stats.n_generated * sizeof(int32_t));

    /* misuse of the target */
    td_target_seq_params tp = {.sample = sp, .max_new_tokens = 8, .n_logprobs = 2};
    assert_int_equal(t->ops->open(t, 0, &tp, prompt, N_PROMPT, &err), TD_OK);
    assert_int_equal(t->ops->open(t, 0, &tp, prompt, N_PROMPT, &err), TD_E_ARG);
    td_draft tree = {.n = 2, .token = {prompt[0], prompt[1]}, .parent = {-1, 0}};
    td_node_result nodes[3];
    td_verify_item it = {.seq = 0, .tree = &tree, .nodes = nodes};
    assert_int_equal(t->ops->verify(t, &it, 1, NULL, &err), TD_OK);
    assert_true(nodes[0].sample >= 0 && nodes[0].logprob <= 0 && nodes[0].n_alt == 2);
    assert_true(nodes[0].alt_logprob[0] >= nodes[0].alt_logprob[1]);
    assert_int_equal(t->ops->verify(t, &it, 1, NULL, &err), TD_E_ARG); /* no commit in between */
    int32_t off_walk[1] = {it.n_path > 0 ? 1 - it.path[0] : 0};
    assert_int_equal(t->ops->commit(t, 0, off_walk, 1, &err), TD_E_ARG);
    assert_int_equal(t->ops->commit(t, 0, it.path, it.n_path, &err), TD_OK);
    td_draft bad = {.n = 1, .token = {1 << 30}, .parent = {-1}};
    it.tree = &bad;
    assert_int_equal(t->ops->verify(t, &it, 1, NULL, &err), TD_E_ARG); /* token outside the vocabulary */
    it.seq = 3;
    assert_int_equal(t->ops->verify(t, &it, 1, NULL, &err), TD_E_ARG); /* not open */
    t->ops->release(t, 0);
    assert_int_equal(td_spec_target_local_open_seqs(t), 0);

    td_spec_session_destroy(ss);
    td_target_destroy(t);
    td_drafter_destroy(d[0]);
    td_drafter_destroy(d[1]);
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
}

/* A drafter that always proposes the same token: what plain greedy decoding
 * would produce first, so acceptances and rejections both happen. */
typedef struct fixed_drafter {
    td_drafter base;
    int32_t token;
} fixed_drafter;

static int fixed_propose(td_drafter *d, int32_t seq, const int32_t *h, size_t n, int32_t max, td_draft *out) {
    (void)seq; (void)h; (void)n; (void)max;
    out->n = 1;
    out->token[0] = ((fixed_drafter *)d)->token;
    out->parent[0] = -1;
    out->prob[0] = 0;
    return TD_OK;
}
static void fixed_destroy(td_drafter *d) { (void)d; }
static const td_drafter_ops fixed_ops = {"fixed", fixed_propose, NULL, NULL, NULL, fixed_destroy, NULL};

/* Chi-square homogeneity statistic of two count vectors. */
static double chi2_two_sample(const int *a, const int *b, int k) {
    double na = 0, nb = 0, x = 0;
    for (int i = 0; i < k; i++) { na += a[i]; nb += b[i]; }
    for (int i = 0; i < k; i++) {
        double tot = a[i] + b[i];
        if (tot == 0) continue;
        double ea = tot * na / (na + nb), eb = tot * nb / (na + nb);
        x += (a[i] - ea) * (a[i] - ea) / ea + (b[i] - eb) * (b[i] - eb) / eb;
    }
    return x;
}

static double rejection_chi2(bool skip_residual) {
    enum { N = 1500, V = 320 };
    td_sample_params sp = td_sample_defaults();
    sp.temperature = 1.0f;
    sp.top_k = 4;
    int32_t first;
    td_sample_params greedy = td_sample_defaults();
    plain(&greedy, &first, 1);
    fixed_drafter fd = {{.ops = &fixed_ops}, first};
    td_drafter *d = &fd.base;
    td_spec_params spp = td_spec_defaults();
    spp.mode = TD_SPEC_REJECTION;
    spp.adaptive = false;
    spp.draft_max = 1;
    spp.test_skip_residual = skip_residual;
    static int a[V], b[V];
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    /* Two tokens are generated so that the first one is verified against a
     * draft (no draft is made for a request's last token); the first is
     * counted. */
    for (int i = 0; i < N; i++) {
        int32_t t[2];
        sp.seed = (uint64_t)i;
        plain(&sp, t, 2);
        a[t[0]]++;
        sp.seed = (uint64_t)(N + i); /* independent stream for the other sample */
        speculative(&sp, &d, 1, &spp, 1, t, 2, NULL);
        b[t[0]]++;
    }
    return chi2_two_sample(a, b, V);
}

static void rejection_mode_keeps_distribution(void **s) {
    (void)s;
    /* top_k 4: at most 4 categories, 3 degrees of freedom; 30.7 is the
     * 1e-6 upper quantile of chi-square(3), so a correct sampler fails
     * with probability 1e-6 (and the seeds are fixed: it never flakes). */
    double ok = rejection_chi2(false);
    double broken = rejection_chi2(true);
    fprintf(stderr, "# rejection sampling chi-square: %.2f (correct), %.2f (correction removed), threshold 30.7\n",
            ok, broken);
    assert_true(ok < 30.7);
    assert_true(broken > 30.7);
}

/* A drafter whose propose fails: td_spec_run names it and keeps its reason. */
static int failing_propose(td_drafter *d, int32_t seq, const int32_t *h, size_t n, int32_t max, td_draft *out) {
    (void)seq; (void)h; (void)n; (void)max;
    out->n = 0;
    return td_err_set(&d->err, TD_E_IO, "the drafter's worker went away");
}
static const td_drafter_ops failing_ops = {"failing", failing_propose, NULL, NULL, NULL, fixed_destroy, NULL};

static void failing_drafter_is_named(void **s) {
    (void)s;
    td_drafter fd = {.ops = &failing_ops};
    td_drafter *d = &fd;
    td_kv *kv = td_kv_create(T.m, 1, 64, NULL);
    td_ctx *ctx = td_ctx_create(T.m, 64, T.pool, NULL);
    assert_non_null(kv);
    assert_non_null(ctx);
    td_spec_request rq = {.prompt = prompt, .n_prompt = N_PROMPT, .gen = {.sample = td_sample_defaults(), .max_tokens = 4}};
    td_spec_params spp = td_spec_defaults();
    td_err err = {0};
    assert_int_equal(td_spec_run(T.m, T.tok, ctx, kv, &rq, 1, &d, 1, &spp, &err), TD_E_IO);
    assert_int_equal(err.code, TD_E_IO);
    assert_non_null(strstr(err.msg, "failing"));
    assert_non_null(strstr(err.msg, "the drafter's worker went away"));
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
}

static void bad_parameters_refused(void **s) {
    (void)s;
    td_kv *kv = td_kv_create(T.m, 1, 64, NULL);
    td_ctx *ctx = td_ctx_create(T.m, 64, T.pool, NULL);
    td_spec_request rq = {.prompt = prompt, .n_prompt = N_PROMPT, .gen = {.sample = td_sample_defaults(), .max_tokens = 4}};
    td_spec_params spp = td_spec_defaults();
    td_err err;
    spp.draft_max = TD_DRAFT_MAX + 1;
    assert_int_equal(td_spec_run(T.m, T.tok, ctx, kv, &rq, 1, NULL, 0, &spp, &err), TD_E_ARG);
    spp = td_spec_defaults();
    rq.n_prompt = 0;
    assert_int_equal(td_spec_run(T.m, T.tok, ctx, kv, &rq, 1, NULL, 0, &spp, &err), TD_E_ARG);
    rq.n_prompt = N_PROMPT;
    rq.gen.sample.temperature = -1;
    assert_int_equal(td_spec_run(T.m, T.tok, ctx, kv, &rq, 1, NULL, 0, &spp, &err), TD_E_ARG);
    rq.gen.sample.temperature = 0;
    td_ctx_set_numerics(ctx, TD_NUMERICS_LLAMACPP); /* not batch invariant: refused */
    assert_int_equal(td_spec_run(T.m, T.tok, ctx, kv, &rq, 1, NULL, 0, &spp, &err), TD_E_ARG);
    assert_non_null(strstr(err.msg, "batch-invariant"));
    td_ctx_set_numerics(ctx, TD_NUMERICS_FAST);
    /* no drafters: plain decoding through the speculative loop */
    rq.gen.sample.temperature = 0;
    int32_t out[4], want[4];
    rq.out_tokens = out;
    assert_int_equal(td_spec_run(T.m, T.tok, ctx, kv, &rq, 1, NULL, 0, &spp, &err), TD_OK);
    td_sample_params sp = td_sample_defaults();
    plain(&sp, want, 4);
    assert_memory_equal(out, want, sizeof want);
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(greedy_identical),
        cmocka_unit_test(greedy_identical_reference),
        cmocka_unit_test(seeded_sampling_identical),
        cmocka_unit_test(batched_requests_identical),
        cmocka_unit_test(session_requests_join_and_leave),
        cmocka_unit_test(prefix_reuse_is_exact),
        cmocka_unit_test(device_style_verify_is_the_same),
        cmocka_unit_test(rejection_mode_keeps_distribution),
        cmocka_unit_test(bad_parameters_refused),
        cmocka_unit_test(failing_drafter_is_named),
    };
    struct CMUnitTest kept[sizeof tests / sizeof tests[0]]; /* TD_TEST_FILTER, TD_TEST_SKIP: test_cases.h */
    return test_cases_run("test_spec", tests, sizeof tests / sizeof tests[0], kept, setup, teardown);
}
