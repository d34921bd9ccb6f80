/* test_model.c — the forward pass on tiny random models (every weight type,
 * llama and qwen2): agreement with a naive float reference written here from
 * the architecture, batch invariance (alone / batched / chunked / mixed with
 * another sequence / 1 vs 2 threads, all bitwise), KV truncation, and clear
 * errors for bad rows and bad files.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf/gguf.h"
#include "model/model.h"
#include "sample/sample.h"
#include "model/model_internal.h" /* the attention kernels, tested directly below */
#include "quant/quant.h"

typedef struct fixture {
    char dir[64];
    char path[128];
    td_gguf *g;
    td_model *m;
    td_pool *pool;
} fixture;

static int make_tiny(fixture *f, const char *args) {
    snprintf(f->dir, sizeof f->dir, "/tmp/td_model_XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    snprintf(f->path, sizeof f->path, "%s/tiny.gguf", f->dir);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s/td-mktiny %s %s > /dev/null", TD_BINARY_DIR, f->path, args);
    if (system(cmd) != 0) return -1;
    td_err err;
    if (td_gguf_open(f->path, &f->g, &err)) { fprintf(stderr, "%s\n", err.msg); return -1; }
    if (td_model_load(f->g, &f->m, &err)) { fprintf(stderr, "%s\n", err.msg); return -1; }
    f->pool = td_pool_create(2, NULL);
    return f->pool ? 0 : -1;
}

static void drop_tiny(fixture *f) {
    td_pool_destroy(f->pool);
    td_model_free(f->m);
    td_gguf_close(f->g);
    unlink(f->path);
    rmdir(f->dir);
}

/* ---- naive reference: everything dequantized to float, computed in double ---- */

static float *dequant(const td_gguf *g, const char *name, int64_t *n_out) {
    const td_gguf_tensor *t = td_gguf_find_tensor(g, name);
    if (!t) return NULL;
    int64_t n = (int64_t)(t->ne[0] * t->ne[1]);
    float *v = malloc((size_t)n * sizeof *v);
    td_quant_traits_ref(t->type)->to_float(t->data, v, n);
    if (n_out) *n_out = n;
    return v;
}

static void matvec(const float *W, const double *x, int64_t n_in, int64_t n_out, double *y) {
    for (int64_t o = 0; o < n_out; o++) {
        double s = 0;
        for (int64_t i = 0; i < n_in; i++) s += (double)W[o * n_in + i] * x[i];
        y[o] = s;
    }
}

static void rmsnorm(const double *x, const float *w, int64_t n, double eps, double *out) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * s * w[i];
}

static void rope(double *h, int pos, const td_hparams *hp) {
    for (int i = 0; i < hp->n_rot / 2; i++) {
        double th = pos * hp->rope_freq_scale * pow(hp->rope_base, -2.0 * i / hp->n_rot);
        int a = hp->rope_kind == TD_ROPE_NORM ? 2 * i : i;
        int b = hp->rope_kind == TD_ROPE_NORM ? 2 * i + 1 : i + hp->n_rot / 2;
        double x0 = h[a], x1 = h[b];
        h[a] = x0 * cos(th) - x1 * sin(th);
        h[b] = x0 * sin(th) + x1 * cos(th);
    }
}

/* Logits (n_tokens, n_vocab) of a whole sequence, by the book. */
static double *reference_logits(const td_gguf *g, const td_hparams *hp, const int32_t *toks, int n) {
    int64_t E = hp->n_embd, hd = hp->head_dim, F = hp->n_ff, V = hp->n_vocab;
    int64_t qd = hp->n_head * hd, kvd = hp->n_head_kv * hd;
    double *K = calloc((size_t)(hp->n_layer * n * kvd), sizeof(double));
    double *Vc = calloc((size_t)(hp->n_layer * n * kvd), sizeof(double));
    double *out = calloc((size_t)(n * V), sizeof(double));
    double *x = malloc(E * sizeof(double)), *xn = malloc(E * sizeof(double));
    double *q = malloc(qd * sizeof(double)), *att = malloc(qd * sizeof(double));
    double *tmp = malloc((F > V ? F : V) * sizeof(double)), *up = malloc(F * sizeof(double));
    double *sc = malloc((size_t)n * sizeof(double));
    float *emb = dequant(g, "token_embd.weight", NULL);
    float *outw = td_gguf_find_tensor(g, "output.weight") ? dequant(g, "output.weight", NULL) : emb;
    float *onorm = dequant(g, "output_norm.weight", NULL);
    char nm[96];
    for (int p = 0; p < n; p++) {
        for (int64_t i = 0; i < E; i++) x[i] = emb[toks[p] * E + i];
        for (int l = 0; l < hp->n_layer; l++) {
#define W(s) (snprintf(nm, sizeof nm, "blk.%d." s, l), dequant(g, nm, NULL))
            float *an = W("attn_norm.weight"), *fn = W("ffn_norm.weight");
            float *wq = W("attn_q.weight"), *wk = W("attn_k.weight"), *wv = W("attn_v.weight");
            float *wo = W("attn_output.weight"), *wg = W("ffn_gate.weight"), *wu = W("ffn_up.weight");
            float *wd = W("ffn_down.weight");
            float *bq = hp->qkv_bias ? W("attn_q.bias") : NULL, *bk = hp->qkv_bias ? W("attn_k.bias") : NULL;
            float *bv = hp->qkv_bias ? W("attn_v.bias") : NULL;
#undef W
            double *kp = K + ((int64_t)l * n + p) * kvd, *vp = Vc + ((int64_t)l * n + p) * kvd;
            rmsnorm(x, an, E, hp->rms_eps, xn);
            matvec(wq, xn, E, qd, q);
            matvec(wk, xn, E, kvd, kp);
            matvec(wv, xn, E, kvd, vp);
            if (bq) {
                for (int64_t i = 0; i < qd; i++) q[i] += bq[i];
                for (int64_t i = 0; i < kvd; i++) { kp[i] += bk[i]; vp[i] += bv[i]; }
            }
            for (int h = 0; h < hp->n_head; h++) rope(q + h * hd, p, hp);
            for (int h = 0; h < hp->n_head_kv; h++) rope(kp + h * hd, p, hp);
            for (int h = 0; h < hp->n_head; h++) {
                int kvh = h / (hp->n_head / hp->n_head_kv);
                double mx = -1e300, sum = 0;
                for (int t = 0; t <= p; t++) {
                    double s = 0;
                    const double *kt = K + ((int64_t)l * n + t) * kvd + kvh * hd;
                    for (int64_t i = 0; i < hd; i++) s += q[h * hd + i] * kt[i];
                    sc[t] = s / sqrt((double)hd);
                    if (sc[t] > mx) mx = sc[t];
                }
                for (int t = 0; t <= p; t++) { sc[t] = exp(sc[t] - mx); sum += sc[t]; }
                for (int64_t i = 0; i < hd; i++) {
                    double a = 0;
                    for (int t = 0; t <= p; t++) a += sc[t] / sum * Vc[((int64_t)l * n + t) * kvd + kvh * hd + i];
                    att[h * hd + i] = a;
                }
            }
            matvec(wo, att, qd, E, tmp);
            for (int64_t i = 0; i < E; i++) x[i] += tmp[i];
            rmsnorm(x, fn, E, hp->rms_eps, xn);
            matvec(wg, xn, E, F, tmp);
            matvec(wu, xn, E, F, up);
            for (int64_t i = 0; i < F; i++) tmp[i] = tmp[i] / (1 + exp(-tmp[i])) * up[i];
            double *down = malloc(E * sizeof(double));
            matvec(wd, tmp, F, E, down);
            for (int64_t i = 0; i < E; i++) x[i] += down[i];
            free(down);
            free(an); free(fn); free(wq); free(wk); free(wv); free(wo); free(wg); free(wu); free(wd);
            free(bq); free(bk); free(bv);
        }
        rmsnorm(x, onorm, E, hp->rms_eps, xn);
        matvec(outw, xn, E, V, out + (int64_t)p * V);
    }
    if (outw != emb) free(outw);
    free(emb); free(onorm); free(K); free(Vc); free(x); free(xn); free(q); free(att); free(tmp); free(up); free(sc);
    return out;
}

/* Runs tokens one per pass through a fresh cache, with the given matmul
 * order; returns (n, n_vocab) logits. */
static float *decode_one_by_one_in(td_numerics order, fixture *f, td_pool *pool, const int32_t *toks, int n) {
    int32_t V = td_model_hparams(f->m)->n_vocab;
    td_kv *kv = td_kv_create(f->m, 2, n < 64 ? 64 : n, NULL);
    td_ctx *c = td_ctx_create(f->m, 16, pool, NULL);
    assert_non_null(c);
    td_ctx_set_numerics(c, order);
    float *lg = malloc((size_t)n * V * sizeof(float));
    td_err err;
    for (int i = 0; i < n; i++) {
        td_row r = td_row_linear(0, i, toks[i], true);
        assert_int_equal(td_model_forward(c, kv, &r, 1, lg + (size_t)i * V, &err), TD_OK);
    }
    td_ctx_destroy(c);
    td_kv_destroy(kv);
    return lg;
}

static float *decode_one_by_one(fixture *f, td_pool *pool, const int32_t *toks, int n) {
    return decode_one_by_one_in(TD_NUMERICS_FAST, f, pool, toks, n);
}

static const int32_t seq_a[12] = {5, 17, 200, 3, 99, 42, 250, 7, 7, 180, 64, 1};

static void check_against_reference(const char *args) {
    fixture f = {0};
    assert_int_equal(make_tiny(&f, args), 0);
    const td_hparams *hp = td_model_hparams(f.m);
    int n = 8;
    float *got = decode_one_by_one(&f, f.pool, seq_a, n);
    double *want = reference_logits(f.g, hp, seq_a, n);
    double max_err = 0, max_abs = 0;
    int argmax_same = 0;
    for (int p = 0; p < n; p++) {
        int ag = 0, aw = 0;
        for (int v = 0; v < hp->n_vocab; v++) {
            double d = fabs(got[p * hp->n_vocab + v] - want[p * hp->n_vocab + v]);
            if (d > max_err) max_err = d;
            if (fabs(want[p * hp->n_vocab + v]) > max_abs) max_abs = fabs(want[p * hp->n_vocab + v]);
            if (got[p * hp->n_vocab + v] > got[p * hp->n_vocab + ag]) ag = v;
            if (want[p * hp->n_vocab + v] > want[p * hp->n_vocab + aw]) aw = v;
        }
        argmax_same += ag == aw;
    }
    /* Activations are quantized to 8 bits before each matmul, as llama.cpp
     * does: agreement is close, not exact. A structural bug (wrong rope pair,
     * head mapping, missing bias) gives errors of the order of the logits. */
    printf("# %s: max |logit error| %.4f (max |logit| %.3f), argmax agree %d/%d\n", args, max_err, max_abs,
           argmax_same, n);
    assert_true(max_err < 0.05 * max_abs + 1e-3);
    assert_true(argmax_same >= n - 1);
    free(got);
    free(want);
    drop_tiny(&f);
}

static void matches_reference_llama_mixed_types(void **s) { (void)s; check_against_reference("--arch llama"); }
static void matches_reference_qwen2(void **s) { (void)s; check_against_reference("--arch qwen2"); }
static void matches_reference_tied_q8_0(void **s) { (void)s; check_against_reference("--tied --type Q8_0"); }

static void batch_invariance_in(td_numerics order) {
    fixture f = {0};
    /* the mixed types include K-quants, whose 256-element blocks the
     * invariant order's chunks of 128 attention inputs would cut */
    assert_int_equal(make_tiny(&f, order == TD_NUMERICS_TP_INVARIANT ? "--arch llama --type Q8_0" : "--arch llama"), 0);
    int32_t V = td_model_hparams(f.m)->n_vocab;
    int n = 12;
    /* the baseline: one row per pass; in llamacpp order those take the
     * one-token attention, so there the first multi-row run is the baseline */
    float *alone = order != TD_NUMERICS_LLAMACPP ? decode_one_by_one_in(order, &f, f.pool, seq_a, n) : NULL;
    size_t row = (size_t)V * sizeof(float);
    td_err err;

    /* whole prefill, chunked prefill, and two interleaved sequences */
    for (int chunk = 1; chunk <= n; chunk++) {
        td_kv *kv = td_kv_create(f.m, 2, 64, NULL);
        td_ctx *c = td_ctx_create(f.m, 32, f.pool, NULL);
        assert_non_null(c);
        td_ctx_set_numerics(c, order);
        float *lg = malloc((size_t)2 * n * row);
        for (int p0 = 0; p0 < n; p0 += chunk) {
            td_row rows[32];
            int k = 0;
            for (int p = p0; p < n && p < p0 + chunk; p++) {
                rows[k++] = td_row_linear(1, p, seq_a[(p * 7) % n], false); /* a different sequence alongside */
                rows[k++] = td_row_linear(0, p, seq_a[p], true);
            }
            float *dst = malloc((size_t)k * row);
            assert_int_equal(td_model_forward(c, kv, rows, k, dst, &err), TD_OK);
            for (int i = 0; i < k / 2; i++) memcpy(lg + (size_t)(p0 + i) * V, dst + (size_t)i * V, row);
            free(dst);
        }
        if (!alone) {
            alone = lg;
            lg = NULL;
        } else {
            for (int p = 0; p < n; p++) assert_memory_equal(lg + (size_t)p * V, alone + (size_t)p * V, row);
        }
        free(lg);
        td_ctx_destroy(c);
        td_kv_destroy(kv);
    }
    /* one thread vs two */
    td_pool *one = td_pool_create(1, NULL);
    float *single = decode_one_by_one_in(order, &f, one, seq_a, n);
    float *two = decode_one_by_one_in(order, &f, f.pool, seq_a, n);
    assert_memory_equal(single, two, (size_t)n * row);
    free(single);
    free(two);
    td_pool_destroy(one);
    free(alone);
    drop_tiny(&f);
}

/* Both matmul orders keep logits batch invariant, each on its own. (In
 * TD_NUMERICS_LLAMACPP a pass of one row takes llama.cpp's one-token
 * attention order; the passes above all have two rows or more, and the
 * one-row passes of decode_one_by_one agree with each other.) */
static void batch_invariance(void **s) {
    (void)s;
    batch_invariance_in(TD_NUMERICS_FAST);
    batch_invariance_in(TD_NUMERICS_REFERENCE);
    batch_invariance_in(TD_NUMERICS_LLAMACPP);
    batch_invariance_in(TD_NUMERICS_TP_INVARIANT);
}

/* Tensor-parallel loading of the tiny model (2 KV heads, 512 FFN rows):
 * two ranks hold 1 + 1 KV heads, FFN and vocabulary halves, whose bytes add
 * up to the whole; three ranks would leave one without attention heads and
 * are refused, naming the tensor and the count. A split model will not run
 * without its group's communicator. The tp-invariant order (unsplit) stays
 * within rounding of fast. (tp_mpi_check runs split passes under mpirun.) */
static void tp_shards(void **s) {
    (void)s;
    fixture f = {0};
    /* the mixed types' K-quant blocks (256) are wider than a rank's 128
     * attention inputs: that split is refused, naming the tensor; the
     * invariant order is unavailable there too */
    assert_int_equal(make_tiny(&f, "--arch llama"), 0);
    td_model *k = NULL;
    td_err kerr;
    assert_int_equal(td_model_load_shard(f.g, 0, 2, &k, &kerr), TD_E_UNSUPPORTED);
    assert_non_null(strstr(kerr.msg, "blk.1.attn_output.weight"));
    {
        td_ctx *ctx = td_ctx_create(f.m, 4, f.pool, &kerr);
        td_kv *kv = td_kv_create(f.m, 1, 16, &kerr);
        td_ctx_set_numerics(ctx, TD_NUMERICS_TP_INVARIANT);
        td_row row = td_row_linear(0, 0, 5, true);
        float *lg = malloc((size_t)td_model_hparams(f.m)->n_vocab * sizeof(float));
        assert_int_equal(td_model_forward(ctx, kv, &row, 1, lg, &kerr), TD_E_UNSUPPORTED);
        free(lg);
        td_kv_destroy(kv);
        td_ctx_destroy(ctx);
    }
    drop_tiny(&f);
    assert_int_equal(make_tiny(&f, "--arch llama --type Q4_1"), 0);
    const td_hparams *hp = td_model_hparams(f.m);
    td_model *a = NULL, *b = NULL, *c = NULL;
    td_err err;
    assert_int_equal(td_model_load_shard(f.g, 0, 2, &a, &err), TD_OK);
    assert_int_equal(td_model_load_shard(f.g, 1, 2, &b, &err), TD_OK);
    assert_int_equal(td_model_tp_size(b), 2);
    assert_int_equal(td_model_tp_rank(b), 1);
    assert_int_equal(a->shard.n_head_kv, 1);
    assert_int_equal(b->shard.kv_head0, 1);
    assert_int_equal(b->shard.head0, hp->n_head / 2);
    assert_int_equal(a->layers[0].wq.n_out, (int64_t)a->shard.n_head * hp->head_dim);
    assert_int_equal(a->layers[0].wo.n_in, (int64_t)a->shard.n_head * hp->head_dim);
    assert_int_equal(a->shard.n_ff + b->shard.n_ff, hp->n_ff);
    assert_int_equal(b->shard.ff0, a->shard.n_ff);
    assert_int_equal(b->layers[1].w_down.n_in, b->shard.n_ff);
    assert_int_equal(a->shard.n_vocab % TD_SHARD_VOCAB_UNIT, 0);
    assert_int_equal(b->shard.vocab0, a->shard.n_vocab);
    assert_int_equal(a->shard.n_vocab + b->shard.n_vocab, hp->n_vocab);
    assert_true(td_model_weight_bytes(a) + td_model_weight_bytes(b) == td_model_weight_bytes(f.m));
    /* a split model's pass needs the communicator of a group of its size */
    td_ctx *ctx = td_ctx_create(a, 4, f.pool, &err);
    td_kv *kv = td_kv_create(a, 1, 16, &err);
    assert_non_null(ctx);
    assert_non_null(kv);
    td_row row = td_row_linear(0, 0, 5, true);
    float *lg = malloc((size_t)hp->n_vocab * sizeof(float));
    assert_int_equal(td_model_forward(ctx, kv, &row, 1, lg, &err), TD_E_ARG);
    assert_non_null(strstr(err.msg, "communicator"));
    td_comm *single = td_comm_open("single", &err);
    assert_non_null(single);
    assert_int_equal(td_ctx_set_comm(ctx, single, &err), TD_E_ARG);
    td_comm_close(single);
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
    free(lg);
    td_model_free(a);
    td_model_free(b);
    assert_int_equal(td_model_load_shard(f.g, 0, 3, &c, &err), TD_E_UNSUPPORTED);
    assert_null(c);
    assert_non_null(strstr(err.msg, "attn_k"));
    assert_non_null(strstr(err.msg, "across 3 ranks"));
    assert_int_equal(td_model_load_shard(f.g, 2, 2, &c, &err), TD_E_ARG);

    /* the invariant order only regroups sums: close to fast, not equal */
    int n = 12;
    float *fast = decode_one_by_one_in(TD_NUMERICS_FAST, &f, f.pool, seq_a, n);
    float *inv = decode_one_by_one_in(TD_NUMERICS_TP_INVARIANT, &f, f.pool, seq_a, n);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < (size_t)n * hp->n_vocab; i++) {
        double d = fabs((double)fast[i] - inv[i]);
        if (d > worst) worst = d;
        if (fabs(fast[i]) > scale) scale = fabs(fast[i]);
    }
    assert_true(worst <= 1e-4 * scale);
    free(fast);
    free(inv);
    drop_tiny(&f);
}

/* Past 64 cached positions attention reads a shared f32 copy of the prefix
 * (forward.c, "wide"); below it, the fp16 cache. Logits must not care which:
 * one-by-one decoding (copy used from position 63 on) against chunked,
 * interleaved prefill (copy used from the second chunk on) and tree rows, all
 * bitwise; and against the double-precision reference. */
static void long_context_invariance(void **s) {
    (void)s;
    fixture f = {0};
    assert_int_equal(make_tiny(&f, "--arch llama"), 0);
    const td_hparams *hp = td_model_hparams(f.m);
    int32_t V = hp->n_vocab;
    size_t row = (size_t)V * sizeof(float);
    enum { N = 150, CHUNK = 40 };
    int32_t toks[N], other[N];
    for (int i = 0; i < N; i++) {
        toks[i] = (i * 37 + 11) % V;
        other[i] = (i * 53 + 5) % V;
    }
    float *alone = decode_one_by_one(&f, f.pool, toks, N);
    td_err err;

    td_kv *kv = td_kv_create(f.m, 2, N + 8, NULL);
    td_ctx *c = td_ctx_create(f.m, 2 * CHUNK, f.pool, NULL);
    float *lg = malloc((size_t)2 * CHUNK * row);
    for (int p0 = 0; p0 < N; p0 += CHUNK) {
        td_row rows[2 * CHUNK];
        int k = 0;
        for (int p = p0; p < N && p < p0 + CHUNK; p++) {
            rows[k++] = td_row_linear(0, p, toks[p], true);
            rows[k++] = td_row_linear(1, p, other[p], false);
        }
        assert_int_equal(td_model_forward(c, kv, rows, k, lg, &err), TD_OK);
        for (int i = 0; i < k / 2; i++) assert_memory_equal(lg + (size_t)i * V, alone + (size_t)(p0 + i) * V, row);
    }
    /* a tree after a long prefix: roll back to 130, then 130 -> {131, 131'} */
    assert_int_equal(td_kv_truncate(kv, 0, 130), TD_OK);
    int32_t alt = (toks[131] + 1) % V;
    td_row tree[3] = {{0, 130, toks[130], true, true, -1}, {0, 131, toks[131], true, true, 0},
                      {0, 131, alt, true, true, 0}};
    assert_int_equal(td_model_forward(c, kv, tree, 3, lg, &err), TD_OK);
    assert_memory_equal(lg, alone + (size_t)130 * V, row);
    assert_memory_equal(lg + V, alone + (size_t)131 * V, row);
    int32_t path[132];
    memcpy(path, toks, 131 * sizeof(int32_t));
    path[131] = alt;
    float *want_alt = decode_one_by_one(&f, f.pool, path, 132);
    assert_memory_equal(lg + 2 * (size_t)V, want_alt + (size_t)131 * V, row);
    free(want_alt);

    /* against the reference at every position */
    double *want = reference_logits(f.g, hp, toks, N);
    double max_err = 0, max_abs = 0;
    for (size_t i = 0; i < (size_t)N * V; i++) {
        double d = fabs(alone[i] - want[i]);
        if (d > max_err) max_err = d;
        if (fabs(want[i]) > max_abs) max_abs = fabs(want[i]);
    }
    printf("# %d positions: max |logit error| %.4f (max |logit| %.3f)\n", N, max_err, max_abs);
    assert_true(max_err < 0.05 * max_abs + 1e-3);
    free(want);
    free(lg);
    free(alone);
    td_ctx_destroy(c);
    td_kv_destroy(kv);
    drop_tiny(&f);
}

static void kv_truncate_rolls_back(void **s) {
    (void)s;
    fixture f = {0};
    assert_int_equal(make_tiny(&f, "--arch llama"), 0);
    int32_t V = td_model_hparams(f.m)->n_vocab;
    size_t row = (size_t)V * sizeof(float);
    int32_t kept[10] = {5, 17, 200, 3, 99, 42, 11, 12, 13, 14};
    float *want = decode_one_by_one(&f, f.pool, kept, 10);

    td_kv *kv = td_kv_create(f.m, 1, 128, NULL);
    td_ctx *c = td_ctx_create(f.m, 16, f.pool, NULL);
    float *lg = malloc(16 * row);
    td_err err;
    /* 6 accepted tokens, a rejected draft of 9, then the real continuation:
     * its logits must equal those of a cache that never saw the draft. */
    td_row rows[16];
    for (int i = 0; i < 6; i++) rows[i] = td_row_linear(0, i, kept[i], false);
    assert_int_equal(td_model_forward(c, kv, rows, 6, lg, &err), TD_OK);
    for (int i = 0; i < 9; i++) rows[i] = td_row_linear(0, 6 + i, seq_a[i], true);
    assert_int_equal(td_model_forward(c, kv, rows, 9, lg, &err), TD_OK);
    assert_int_equal(td_kv_truncate(kv, 0, 6), TD_OK);
    assert_int_equal(td_kv_seq_len(kv, 0), 6);
    assert_int_not_equal(td_kv_truncate(kv, 0, 7), TD_OK); /* cannot grow by truncation */
    for (int i = 0; i < 4; i++) rows[i] = td_row_linear(0, 6 + i, kept[6 + i], true);
    assert_int_equal(td_model_forward(c, kv, rows, 4, lg, &err), TD_OK);
    for (int i = 0; i < 4; i++) assert_memory_equal(lg + (size_t)i * V, want + (size_t)(6 + i) * V, row);
    free(lg);
    free(want);
    td_ctx_destroy(c);
    td_kv_destroy(kv);
    drop_tiny(&f);
}

/* A token tree: every node's logits equal linear decoding of its path, and
 * after compaction to one path the cache continues like plain decoding. */
static void tree_rows_match_linear_paths(void **s) {
    (void)s;
    fixture f = {0};
    assert_int_equal(make_tiny(&f, "--arch llama"), 0);
    int32_t V = td_model_hparams(f.m)->n_vocab;
    size_t row = (size_t)V * sizeof(float);
    td_err err;
    /* prefix 4 tokens; tree:        n0(30) -> n1(31) -> n3(33)
     *                               n0     -> n2(32)
     *                               n4(40) (second root)           */
    int32_t prefix[4] = {5, 17, 200, 3};
    td_row tree[5] = {
        {0, 4, 30, true, true, -1}, {0, 5, 31, true, true, 0}, {0, 5, 32, true, true, 0},
        {0, 6, 33, true, true, 1},  {0, 4, 40, true, true, -1},
    };
    td_kv *kv = td_kv_create(f.m, 1, 64, NULL);
    td_ctx *c = td_ctx_create(f.m, 16, f.pool, NULL);
    float *lg = malloc(8 * row);
    td_row pre[4];
    for (int i = 0; i < 4; i++) pre[i] = (td_row){0, i, prefix[i], false, false, 0};
    assert_int_equal(td_model_forward(c, kv, pre, 4, lg, &err), TD_OK);
    assert_int_equal(td_model_forward(c, kv, tree, 5, lg, &err), TD_OK);
    assert_int_equal(td_kv_seq_len(kv, 0), 9);

    int32_t paths[5][7] = {{5, 17, 200, 3, 30}, {5, 17, 200, 3, 30, 31}, {5, 17, 200, 3, 30, 32},
                           {5, 17, 200, 3, 30, 31, 33}, {5, 17, 200, 3, 40}};
    int plen[5] = {5, 6, 6, 7, 5};
    for (int node = 0; node < 5; node++) {
        float *want = decode_one_by_one(&f, f.pool, paths[node], plen[node]);
        assert_memory_equal(lg + (size_t)node * V, want + (size_t)(plen[node] - 1) * V, row);
        free(want);
    }
    /* keep path n0 -> n1 -> n3 (offsets 0, 1, 3), then continue linearly */
    int32_t keep[3] = {0, 1, 3};
    assert_int_equal(td_kv_compact(kv, 0, 4, keep, 3), TD_OK);
    assert_int_equal(td_kv_seq_len(kv, 0), 7);
    td_row next = {0, 7, 77, true, false, 0};
    assert_int_equal(td_model_forward(c, kv, &next, 1, lg, &err), TD_OK);
    int32_t full[8] = {5, 17, 200, 3, 30, 31, 33, 77};
    float *want = decode_one_by_one(&f, f.pool, full, 8);
    assert_memory_equal(lg, want + (size_t)7 * V, row);
    free(want);
    /* malformed trees */
    td_row bad = {0, 9, 1, true, true, 3};
    assert_int_equal(td_model_forward(c, kv, &bad, 1, lg, &err), TD_E_ARG); /* parent not earlier */
    td_row badpos = {0, 3, 1, true, true, -1};
    assert_int_equal(td_model_forward(c, kv, &badpos, 1, lg, &err), TD_E_ARG); /* root not at cache end */
    int32_t badkeep[2] = {1, 0};
    assert_int_equal(td_kv_compact(kv, 0, 4, badkeep, 2), TD_E_ARG);
    free(lg);
    td_ctx_destroy(c);
    td_kv_destroy(kv);
    drop_tiny(&f);
}

static void bad_rows_are_refused(void **s) {
    (void)s;
    fixture f = {0};
    assert_int_equal(make_tiny(&f, "--arch llama"), 0);
    int32_t V = td_model_hparams(f.m)->n_vocab;
    td_kv *kv = td_kv_create(f.m, 1, 4, NULL);
    td_ctx *c = td_ctx_create(f.m, 4, f.pool, NULL);
    float *lg = malloc((size_t)8 * V * sizeof(float));
    td_err err;
    td_row r = td_row_linear(0, 1, 5, true);
    assert_int_equal(td_model_forward(c, kv, &r, 1, lg, &err), TD_E_ARG); /* skips position 0 */
    assert_non_null(strstr(err.msg, "position 1"));
    r = td_row_linear(0, 0, V, true);
    assert_int_equal(td_model_forward(c, kv, &r, 1, lg, &err), TD_E_ARG);
    assert_non_null(strstr(err.msg, "vocabulary"));
    r = td_row_linear(3, 0, 5, true);
    assert_int_equal(td_model_forward(c, kv, &r, 1, lg, &err), TD_E_ARG);
    td_row four[4] = {td_row_linear(0, 0, 1, false), td_row_linear(0, 1, 2, false), td_row_linear(0, 2, 3, false),
                       td_row_linear(0, 3, 4, true)};
    assert_int_equal(td_model_forward(c, kv, four, 4, lg, &err), TD_OK);
    r = td_row_linear(0, 4, 5, true);
    assert_int_equal(td_model_forward(c, kv, &r, 1, lg, &err), TD_E_RANGE); /* context full */
    td_row five[5];
    for (int i = 0; i < 5; i++) five[i] = td_row_linear(0, i, 1, false);
    assert_int_equal(td_model_forward(c, kv, five, 5, lg, &err), TD_E_ARG);  /* more rows than the ctx holds */
    free(lg);
    td_ctx_destroy(c);
    td_kv_destroy(kv);
    drop_tiny(&f);
}

/* td_model_forward_picks on the CPU: the logits of td_model_forward, and
 * td_sample_argmax of each row that asked for them; a CPU context refuses to
 * pick without room for the logits. */
static void picks_are_argmax(void **s) {
    (void)s;
    fixture f = {0};
    assert_int_equal(make_tiny(&f, "--arch llama"), 0);
    const int32_t V = td_model_hparams(f.m)->n_vocab;
    td_kv *ka = td_kv_create(f.m, 1, 16, NULL), *kb = td_kv_create(f.m, 1, 16, NULL);
    td_ctx *c = td_ctx_create(f.m, 6, f.pool, NULL);
    float *la = malloc((size_t)6 * V * sizeof(float)), *lb = malloc((size_t)6 * V * sizeof(float));
    td_row rows[6];
    for (int i = 0; i < 6; i++) rows[i] = td_row_linear(0, i, 10 + 7 * i, i != 2); /* row 2 without logits */
    int32_t picks[6] = {-1, -1, -1, -1, -1, -1};
    td_err err;
    assert_int_equal(td_model_forward(c, ka, rows, 6, la, &err), TD_OK);
    assert_int_equal(td_model_forward_picks(c, kb, rows, 6, NULL, NULL, picks, NULL, &err), TD_E_ARG);
    assert_non_null(strstr(err.msg, "logits"));
    assert_int_equal(td_model_forward_picks(c, kb, rows, 6, NULL, lb, NULL, NULL, &err), TD_E_ARG);
    assert_int_equal(td_model_forward_picks(c, kb, rows, 6, NULL, lb, picks, NULL, &err), TD_OK);
    assert_memory_equal(la, lb, (size_t)5 * V * sizeof(float));
    for (int j = 0; j < 5; j++) assert_int_equal(picks[j], td_sample_argmax(la + (size_t)j * V, V));
    assert_int_equal(picks[5], -1); /* five rows asked */
    /* with plans: td_sampler_pick's token at each row's next position, or
     * -1 (undecided: the caller picks from the row) */
    td_kv *kc = td_kv_create(f.m, 1, 16, NULL);
    td_sample_params sp = td_sample_defaults();
    sp.temperature = 1.3f, sp.top_k = 20, sp.top_p = 0.9f, sp.seed = 77;
    td_sample_plan plans[5];
    for (int j = 0, r = 0; r < 6; r++)
        if (rows[r].logits) {
            assert_true(td_sample_plan_make(&sp, rows[r].pos + 1, &plans[j]));
            plans[j].n_top = j == 1 ? 0 : 5; /* observations too, but not for row 1 */
            j++;
        }
    td_sampler *smp = td_sampler_create(&sp, V, NULL);
    assert_non_null(smp);
    int32_t tops[5 * TD_SAMPLE_TOP_MAX];
    assert_int_equal(td_model_forward_picks(c, kc, rows, 6, plans, lb, picks, tops, &err), TD_OK);
    for (int j = 0; j < 5; j++) {
        if (j == 1) {
            assert_int_equal(tops[j * TD_SAMPLE_TOP_MAX], -1);
            continue;
        }
        int32_t want[5];
        td_sample_top_ids(la + (size_t)j * V, V, want, 5);
        assert_memory_equal(tops + j * TD_SAMPLE_TOP_MAX, want, sizeof want);
    }
    assert_memory_equal(la, lb, (size_t)5 * V * sizeof(float));
    int decided = 0;
    for (int j = 0, r = 0; r < 6; r++) {
        if (!rows[r].logits) continue;
        if (picks[j] >= 0) {
            assert_int_equal(picks[j], td_sampler_pick(smp, la + (size_t)j * V, rows[r].pos + 1, NULL, 0));
            decided++;
        }
        j++;
    }
    assert_int_equal(decided, 5); /* random weights give no ties at the boundaries */
    assert_int_equal(td_model_pass_logits(c, 0, lb, &err), TD_E_UNSUPPORTED);
    /* scores: td_sample_score_row of each row with logits, for its target */
    td_kv *kd = td_kv_create(f.m, 1, 16, NULL);
    const int32_t targets[5] = {3, -1, 0, V - 1, 42};
    td_sample_score scores[5];
    assert_int_equal(td_model_forward_scores(c, kd, rows, 6, targets, 4, NULL, scores, &err), TD_E_ARG);
    assert_int_equal(td_model_forward_scores(c, kd, rows, 6, targets, TD_SAMPLE_ALT_MAX + 1, lb, scores, &err),
                     TD_E_ARG);
    assert_int_equal(td_model_forward_scores(c, kd, rows, 6, NULL, 4, lb, scores, &err), TD_E_ARG);
    const td_pass_out targets_alone = {.targets = targets, .n_alt = 4};
    assert_int_equal(td_model_forward_out(c, kd, rows, 6, lb, &targets_alone, &err), TD_E_ARG);
    assert_int_equal(td_model_forward_out(c, kd, rows, 6, lb, NULL, &err), TD_E_ARG);
    assert_int_equal(td_model_forward_scores(c, kd, rows, 6, targets, 4, lb, scores, &err), TD_OK);
    assert_memory_equal(la, lb, (size_t)5 * V * sizeof(float));
    for (int j = 0; j < 5; j++) {
        td_sample_score want;
        td_sample_score_row(la + (size_t)j * V, V, targets[j], 4, &want);
        assert_memory_equal(&scores[j].sum, &want.sum, sizeof want.sum);
        assert_true(scores[j].max == want.max && scores[j].logit == want.logit && scores[j].argmax == want.argmax);
        assert_int_equal(scores[j].n_alt, 4);
        assert_memory_equal(scores[j].alt_id, want.alt_id, 4 * sizeof(int32_t));
    }
    td_kv_destroy(kd);
    td_sampler_destroy(smp);
    td_kv_destroy(kc);
    free(la), free(lb);
    td_ctx_destroy(c);
    td_kv_destroy(ka), td_kv_destroy(kb);
    drop_tiny(&f);
}

static void unsupported_architecture(void **s) {
    (void)s;
    char dir[] = "/tmp/td_arch_XXXXXX", path[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/a.gguf", dir);
    td_gguf_writer *w = td_gguf_writer_create();
    td_gguf_writer_add_str(w, "general.architecture", "gpt2");
    assert_int_equal(td_gguf_writer_save(w, path, NULL), TD_OK);
    td_gguf_writer_destroy(w);
    td_gguf *g;
    td_model *m;
    td_err err;
    assert_int_equal(td_gguf_open(path, &g, &err), TD_OK);
    assert_int_equal(td_model_load(g, &m, &err), TD_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "gpt2"));
    td_gguf_close(g);
    /* llama without its tensors: the first missing one is named */
    w = td_gguf_writer_create();
    td_gguf_writer_add_str(w, "general.architecture", "llama");
    td_gguf_writer_add_u32(w, "llama.embedding_length", 64);
    td_gguf_writer_add_u32(w, "llama.block_count", 1);
    td_gguf_writer_add_u32(w, "llama.feed_forward_length", 128);
    td_gguf_writer_add_u32(w, "llama.attention.head_count", 4);
    assert_int_equal(td_gguf_writer_save(w, path, NULL), TD_OK);
    td_gguf_writer_destroy(w);
    assert_int_equal(td_gguf_open(path, &g, &err), TD_OK);
    assert_int_equal(td_model_load(g, &m, &err), TD_E_FORMAT);
    assert_non_null(strstr(err.msg, "token_embd.weight"));
    td_gguf_close(g);
    unlink(path);
    rmdir(dir);
}

/* The scalar attention kernels (the fallback on CPUs without AVX2) and the
 * AVX2 ones give the same bits: batched queries (tiled prefix, partial
 * groups of eight, a tree row with a chain of slots) and lone ones. */
static float lcg_unit(uint32_t *state) {
    *state = *state * 1664525u + 1013904223u;
    return (float)(*state >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
}

static void run_attention(td_attend_fn fn, const td_attn_batch *proto, const td_attn_query *qs_in, int nq,
                          float *out, int32_t hd, int32_t n_max) {
    td_attn_query qs[TD_ATTN_MAX_QUERIES];
    float *scores = calloc((size_t)nq * (size_t)(n_max + 8), sizeof(float));
    float *lanes = calloc((size_t)nq * TD_ATTN_LANE_SETS * (size_t)hd, sizeof(float));
    float *tile = calloc((size_t)TD_ATTN_TILE * (size_t)hd, sizeof(float));
    assert_true(scores && lanes && tile);
    for (int i = 0; i < nq; i++) {
        qs[i] = qs_in[i];
        qs[i].out = out + (size_t)i * hd;
        qs[i].scores = scores + (size_t)i * (n_max + 8);
        qs[i].lanes = lanes + (size_t)i * TD_ATTN_LANE_SETS * hd;
    }
    td_attn_batch a = *proto;
    a.qs = qs;
    a.n_q = nq;
    a.tile = tile;
    fn(&a);
    free(scores); free(lanes); free(tile);
}

/* The vector RoPE gives the scalar one's bits, for both pair layouts, over
 * values of every magnitude (signed zeros included), and leaves the
 * elements past n_rot alone. */
static void rope_kernels_agree(void **s) {
    (void)s;
    if (strcmp(td_quant_kernel_name(), "scalar") == 0) skip(); /* no vector form to compare */
    uint32_t rng = 777;
    static const int32_t rots[] = {16, 32, 64, 128};
    int compared = 0;
    for (int kind = 0; kind < 2; kind++)
        for (size_t ri = 0; ri < sizeof rots / sizeof rots[0]; ri++) {
            const int32_t n_rot = rots[ri], hd = n_rot + 16;
            for (int trial = 0; trial < 50; trial++) {
                float cs[128], want[144], got[144];
                for (int32_t i = 0; i < n_rot / 2; i++) {
                    float t = (float)trial * 37.0f * powf(10000.0f, -2.0f * (float)i / (float)n_rot);
                    cs[2 * i] = cosf(t), cs[2 * i + 1] = sinf(t);
                }
                for (int32_t d = 0; d < hd; d++) {
                    float v = lcg_unit(&rng) * powf(10.0f, (float)(d % 7) - 3.0f);
                    want[d] = got[d] = (trial % 5 == 0 && d % 3 == 0) ? (d & 1 ? -0.0f : 0.0f) : v;
                }
                td_op_rope(want, cs, n_rot, kind ? TD_ROPE_NEOX : TD_ROPE_NORM);
                td_op_rope_avx2(got, cs, n_rot, kind ? TD_ROPE_NEOX : TD_ROPE_NORM);
                assert_memory_equal(got, want, (size_t)hd * sizeof(float));
                compared++;
            }
        }
    /* and it rotates: one NEOX step moves element 0 */
    float h[32] = {1.0f}, cs[32];
    for (int i = 0; i < 16; i++) cs[2 * i] = 0.0f, cs[2 * i + 1] = 1.0f;
    td_op_rope_avx2(h, cs, 32, TD_ROPE_NEOX);
    assert_true(h[0] == 0.0f && h[16] == 1.0f);
    print_message("%d RoPE calls bitwise equal (scalar, vector)\n", compared);
}

/* Norms of several rows at once give each row's td_op_rmsnorm bits. */
static void rmsnorm_rows_agree(void **s) {
    (void)s;
    enum { N = 576, STRIDE = 600, MAXR = 9 };
    static float x[MAXR * STRIDE], w[N], want[MAXR * STRIDE], got[MAXR * STRIDE];
    uint32_t rng = 99;
    for (int i = 0; i < MAXR * STRIDE; i++) x[i] = lcg_unit(&rng) * powf(2.0f, (float)(i % 13) - 6.0f);
    for (int i = 0; i < N; i++) w[i] = 1.0f + lcg_unit(&rng);
    for (int rows = 1; rows <= MAXR; rows++) {
        memset(want, 0, sizeof want);
        memset(got, 0, sizeof got);
        for (int r = 0; r < rows; r++) td_op_rmsnorm(want + r * STRIDE, x + r * STRIDE, w, N, 1e-5f);
        td_op_rmsnorm_rows(got, x, w, N, 1e-5f, rows, STRIDE);
        assert_memory_equal(got, want, sizeof want); /* the gaps between rows untouched too */
    }
}

static void attention_kernels_agree(void **s) {
    (void)s;
    if (strcmp(td_quant_kernel_name(), "scalar") == 0) skip(); /* nothing to compare against */
    fixture f = {0};
    assert_int_equal(make_tiny(&f, "--arch llama"), 0);
    const td_hparams *hp = td_model_hparams(f.m);
    const int32_t hd = hp->head_dim, n = 150;
    td_kv *kv = td_kv_create(f.m, 1, 256, NULL);
    assert_non_null(kv);
    assert_int_equal(td_kv_reserve(kv, 0, n), TD_OK);
    uint32_t rng = 12345;
    for (int which = 0; which < 2; which++)
        for (int32_t pos = 0; pos < n; pos++) {
            uint16_t *row = td_kv_at(kv, 0, 0, which, pos);
            for (int32_t d = 0; d < kv->kv_dim; d++) row[d] = td_f32_to_fp16(lcg_unit(&rng) * 2.0f);
        }
    enum { NQ = 6 };
    float q[NQ][TD_ATTN_MAX_HEAD_DIM];
    for (int i = 0; i < NQ; i++)
        for (int32_t d = 0; d < hd; d++) q[i][d] = lcg_unit(&rng) * 3.0f;
    static const int32_t chain[3] = {120, 121, 130};
    const int32_t bases[NQ] = {n, n - 3, 7, 64, 1, 100};
    td_attn_query qs[NQ];
    for (int i = 0; i < NQ; i++)
        qs[i] = (td_attn_query){.q = q[i], .base = bases[i], .chain = i == NQ - 1 ? chain : NULL,
                                .n_chain = i == NQ - 1 ? 3 : 0};
    td_attn_batch proto = {.kv = kv, .seq = 0, .layer = 0, .head_off = hd, .head_dim = hd,
                           .scale = 1.0f / sqrtf((float)hd)};
    float want[NQ * TD_ATTN_MAX_HEAD_DIM], got[NQ * TD_ATTN_MAX_HEAD_DIM];
    for (int nq = 1; nq <= NQ; nq += NQ - 1) { /* one query (decode) and six (tiled) */
        run_attention(td_op_attend_scalar, &proto, qs + (NQ - nq), nq, want, hd, n);
        run_attention(td_op_attend_avx2, &proto, qs + (NQ - nq), nq, got, hd, n);
        assert_memory_equal(got, want, (size_t)nq * hd * sizeof(float));
        proto.lone = true;
        run_attention(td_op_attend_scalar, &proto, qs + (NQ - nq), nq, want, hd, n);
        run_attention(td_op_attend_lone_avx2, &proto, qs + (NQ - nq), nq, got, hd, n);
        proto.lone = false;
        assert_memory_equal(got, want, (size_t)nq * hd * sizeof(float));
    }
    /* and the two orders are different computations (the test could fail) */
    run_attention(td_op_attend_avx2, &proto, qs, NQ, want, hd, n);
    assert_true(memcmp(got, want, (size_t)NQ * hd * sizeof(float)) != 0);
    td_kv_destroy(kv);
    drop_tiny(&f);
}

/* The pass as one job of phases and as one pool job per matmul (what split
 * models take) give the same bits, logits and cache: a prefill of two
 * sequences with some rows' logits, a one-row decode, a token tree and a
 * pass that skips layers, on a pool of three threads (on two cores: some
 * enter late, some never). */
/* phased: whether the model's weights let a pass run as phases (a mixed
 * model's q/k/v want different quantized inputs and take the job-per-matmul
 * pass in both contexts); the profile of the phased context says which
 * path each pass took. */
static void schedules_agree_in(td_numerics order, const char *args, int n_threads, bool phased) {
    fixture f = {0};
    assert_int_equal(make_tiny(&f, args), 0);
    const td_hparams *hp = td_model_hparams(f.m);
    int32_t V = hp->n_vocab, L = hp->n_layer;
    td_pool *three = td_pool_create(n_threads, NULL);
    assert_non_null(three);
    td_kv *kv[2];
    td_ctx *c[2];
    float *lg[2];
    for (int s = 0; s < 2; s++) {
        kv[s] = td_kv_create(f.m, 2, 64, NULL);
        c[s] = td_ctx_create(f.m, 32, three, NULL);
        lg[s] = malloc((size_t)32 * V * sizeof(float));
        assert_non_null(kv[s]);
        assert_non_null(c[s]);
        assert_non_null(lg[s]);
        td_ctx_set_numerics(c[s], order);
        td_ctx_set_schedule(c[s], s ? TD_SCHEDULE_JOBS : TD_SCHEDULE_PHASES);
    }
    assert_int_equal(td_ctx_set_pass_profile(c[0], true, NULL), TD_OK);
    uint8_t skip[64] = {0};
    for (int32_t l = 1; l < L; l += 2) skip[l] = 1;
    td_row pre[16], one[1], tree[5], tail[3];
    int n_out_pre = 0;
    for (int i = 0; i < 10; i++) {
        pre[i] = td_row_linear(0, i, seq_a[i], i == 3 || i == 9);
        n_out_pre += pre[i].logits;
    }
    for (int i = 0; i < 6; i++, n_out_pre++) pre[10 + i] = td_row_linear(1, i, seq_a[(i * 5) % 12], true);
    one[0] = td_row_linear(0, 10, 77, true);
    td_row t[5] = {{0, 11, 30, true, true, -1}, {0, 12, 31, true, true, 0}, {0, 12, 32, true, true, 0},
                   {0, 13, 33, true, true, 1},  {0, 11, 40, true, true, -1}};
    memcpy(tree, t, sizeof t);
    for (int i = 0; i < 3; i++) tail[i] = td_row_linear(1, 6 + i, seq_a[i + 2], true);
    struct { const td_row *rows; int n, n_out; const uint8_t *skip; } passes[4] = {
        {pre, 16, n_out_pre, NULL}, {one, 1, 1, NULL}, {tree, 5, 5, NULL}, {tail, 3, 3, skip}};
    td_err err;
    for (int p = 0; p < 4; p++) {
        for (int s = 0; s < 2; s++)
            assert_int_equal(td_model_forward_skip(c[s], kv[s], passes[p].rows, passes[p].n, lg[s], passes[p].skip,
                                                   &err), TD_OK);
        assert_memory_equal(lg[0], lg[1], (size_t)passes[p].n_out * V * sizeof(float));
    }
    /* On 16 threads these shapes' one slice per thread, rounded to 32
     * columns, leaves threads idle; the plan shares the bytes out more
     * evenly (on 3 it may trade a little evenness for fewer claims). */
    td_pass_profile pr;
    td_ctx_pass_profile(c[0], &pr);
    assert_int_equal(pr.passes, phased ? 4 : 0);
    td_ctx_plan plan;
    td_ctx_plan_report(c[0], &plan);
    assert_true(plan.busiest >= 1.0 - 1e-9 && plan.one_slice_busiest >= 1.0 - 1e-9);
    if (n_threads == 16 && phased) assert_true(plan.busiest < plan.one_slice_busiest - 0.05);
    for (int32_t seq = 0; seq < 2; seq++) {
        int32_t len = td_kv_seq_len(kv[0], seq);
        assert_int_equal(len, td_kv_seq_len(kv[1], seq));
        for (int32_t l = 0; l < L; l++)
            for (int kvi = 0; kvi < 2; kvi++)
                for (int32_t slot = 0; slot < len; slot++)
                    assert_memory_equal(td_kv_at(kv[0], seq, l, kvi, slot), td_kv_at(kv[1], seq, l, kvi, slot),
                                        (size_t)kv[0]->kv_dim * sizeof(uint16_t));
    }
    for (int s = 0; s < 2; s++) {
        td_ctx_destroy(c[s]);
        td_kv_destroy(kv[s]);
        free(lg[s]);
    }
    td_pool_destroy(three);
    drop_tiny(&f);
}

static void schedules_agree(void **s) {
    (void)s;
    schedules_agree_in(TD_NUMERICS_FAST, "--arch llama --type Q4_0", 3, true);   /* GGUF rows, no tiles */
    schedules_agree_in(TD_NUMERICS_FAST, "--arch qwen2 --type Q4_1", 3, true);   /* biases; FAST's tiled copies */
    schedules_agree_in(TD_NUMERICS_FAST, "--tied --type Q8_0", 3, true);
    schedules_agree_in(TD_NUMERICS_FAST, "--arch llama --type Q4_K", 3, true);   /* K-quants */
    schedules_agree_in(TD_NUMERICS_REFERENCE, "--arch llama --type Q4_1", 3, true);
    schedules_agree_in(TD_NUMERICS_LLAMACPP, "--arch qwen2 --type Q5_1", 3, true);
    schedules_agree_in(TD_NUMERICS_FAST, "--arch llama", 3, false);              /* mixed: jobs in both */
    /* many threads on few columns: chunks planned finer than one slice per
     * thread, down to single tiles of 16 columns on the tiled copies */
    schedules_agree_in(TD_NUMERICS_FAST, "--arch qwen2 --type Q4_1", 16, true);
    schedules_agree_in(TD_NUMERICS_FAST, "--arch llama --type Q8_0", 16, true);
}

/* The pass profile counts phased passes only, names its steps, and its
 * thread-seconds fit inside threads x wall time. */
static void pass_profile_counts(void **s) {
    (void)s;
    fixture f = {0};
    assert_int_equal(make_tiny(&f, "--arch llama --type Q4_1"), 0);
    td_pool *two = td_pool_create(2, NULL);
    td_kv *kv = td_kv_create(f.m, 1, 64, NULL);
    td_ctx *c = td_ctx_create(f.m, 8, two, NULL);
    float *lg = malloc((size_t)8 * td_model_hparams(f.m)->n_vocab * sizeof(float));
    assert_true(two && kv && c && lg);
    int qkv = -1;
    for (int k = 0; k < TD_PASS_STEPS; k++) {
        assert_string_not_equal(td_pass_step_name(k), "?");
        for (int j = 0; j < k; j++) assert_string_not_equal(td_pass_step_name(k), td_pass_step_name(j));
        if (!strcmp(td_pass_step_name(k), "qkv")) qkv = k;
    }
    assert_string_equal(td_pass_step_name(TD_PASS_STEPS), "?");
    assert_true(qkv >= 0);
    td_err err;
    assert_int_equal(td_ctx_set_pass_profile(c, true, &err), TD_OK);
    td_row rows[3];
    for (int i = 0; i < 3; i++) rows[i] = td_row_linear(0, i, seq_a[i], true);
    assert_int_equal(td_model_forward(c, kv, rows, 3, lg, &err), TD_OK);
    td_pass_profile pr;
    td_ctx_pass_profile(c, &pr);
    assert_int_equal(pr.passes, 1);
    assert_int_equal(pr.threads, 2);
    double inside = 0;
    for (int k = 0; k < TD_PASS_STEPS; k++) {
        assert_true(pr.work_s[k] >= 0 && pr.wait_s[k] >= 0);
        inside += pr.work_s[k] + pr.wait_s[k];
    }
    assert_true(pr.work_s[qkv] > 0);
    assert_true(inside <= pr.threads * pr.wall_s + 1e-6);
    /* the job-per-matmul pass is not phased: nothing counted */
    td_ctx_set_schedule(c, TD_SCHEDULE_JOBS);
    rows[0] = td_row_linear(0, 3, seq_a[3], true);
    assert_int_equal(td_model_forward(c, kv, rows, 1, lg, &err), TD_OK);
    td_ctx_pass_profile(c, &pr);
    assert_int_equal(pr.passes, 1);
    assert_int_equal(td_ctx_set_pass_profile(c, false, &err), TD_OK);
    td_ctx_pass_profile(c, &pr);
    assert_int_equal(pr.passes, 0);
    free(lg);
    td_ctx_destroy(c);
    td_kv_destroy(kv);
    td_pool_destroy(two);
    drop_tiny(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matches_reference_llama_mixed_types),
        cmocka_unit_test(matches_reference_qwen2),
        cmocka_unit_test(matches_reference_tied_q8_0),
        cmocka_unit_test(batch_invariance),
        cmocka_unit_test(schedules_agree),
        cmocka_unit_test(pass_profile_counts),
        cmocka_unit_test(tp_shards),
        cmocka_unit_test(long_context_invariance),
        cmocka_unit_test(kv_truncate_rolls_back),
        cmocka_unit_test(tree_rows_match_linear_paths),
        cmocka_unit_test(bad_rows_are_refused),
        cmocka_unit_test(picks_are_argmax),
        cmocka_unit_test(unsupported_architecture),
        cmocka_unit_test(attention_kernels_agree),
        cmocka_unit_test(rope_kernels_agree),
        cmocka_unit_test(rmsnorm_rows_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
