/* model_load.c — builds a td_model from an open GGUF: reads the llama/qwen2
 * hyper-parameters, finds every weight tensor and checks its type and shape.
 *
 * Matrices stay in the mapping (no copy); 1-D tensors (norms, biases, rope
 * factors) are converted to owned f32 arrays whatever their stored type.
 * A tensor-parallel rank (td_model_load_shard, size > 1) instead copies its
 * slice of every matrix and then lets go of the mapping's pages, so that
 * it keeps about 1/size of the weights resident. Every failure names the
 * key or tensor at fault.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"

typedef struct loader {
    const td_gguf *g;
    const char *arch;
    td_err *err;
    const td_shard *sh;
} loader;

static int get_u32(loader *L, const char *suffix, bool required, int32_t dflt, int32_t *out) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", L->arch, suffix);
    uint64_t v;
    if (!td_gguf_get_u64(L->g, key, &v)) {
        if (td_gguf_find(L->g, key))
            return td_err_set(L->err, TD_E_FORMAT, "metadata '%s': expected a non-negative integer", key);
        if (required) return td_err_set(L->err, TD_E_FORMAT, "metadata '%s' is missing", key);
        *out = dflt;
        return TD_OK;
    }
    if (v > (1u << 30)) return td_err_set(L->err, TD_E_FORMAT, "metadata '%s' = %llu is absurd", key, (unsigned long long)v);
    *out = (int32_t)v;
    return TD_OK;
}

static float get_f32(loader *L, const char *suffix, float dflt) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", L->arch, suffix);
    float v;
    return td_gguf_get_f32(L->g, key, &v) ? v : dflt;
}

/* Finds a matrix of shape (n_out, n_in) usable by the kernels. */
static int find_matrix(loader *L, const char *name, int64_t n_in, int64_t n_out, bool required, td_weight *w) {
    const td_gguf_tensor *t = td_gguf_find_tensor(L->g, name);
    if (!t) {
        if (!required) return TD_OK;
        return td_err_set(L->err, TD_E_FORMAT, "tensor '%s' is missing", name);
    }
    const td_type_traits *tr = td_quant_traits(t->type);
    if (!tr || !tr->weight_ok || !tr->vec_dot)
        return td_err_set(L->err, TD_E_UNSUPPORTED, "tensor '%s': type %s (%u) is not supported for weights",
                          name, tr && tr->name ? tr->name : "unknown", t->type);
    if ((int64_t)t->ne[0] != n_in || (int64_t)t->ne[1] != n_out || t->ne[2] != 1 || t->ne[3] != 1)
        return td_err_set(L->err, TD_E_FORMAT,
                          "tensor '%s': shape [%llu, %llu, %llu, %llu], expected [%lld, %lld]", name,
                          (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                          (unsigned long long)t->ne[2], (unsigned long long)t->ne[3],
                          (long long)n_in, (long long)n_out);
    w->data = t->data;
    w->type = t->type;
    w->n_in = n_in;
    w->n_out = n_out;
    return TD_OK;
}

/* Keeps rows [r0, r1) of w, as an owned copy. */
static int slice_rows(loader *L, const char *name, td_weight *w, int64_t r0, int64_t r1) {
    size_t row = td_quant_row_bytes(w->type, w->n_in);
    void *p = td_alloc((size_t)(r1 - r0) * row);
    if (!p) return td_err_set(L->err, TD_E_NOMEM, "out of memory copying rank %d's slice of '%s'", L->sh->rank, name);
    memcpy(p, (const char *)w->data + (size_t)r0 * row, (size_t)(r1 - r0) * row);
    w->data = w->own = p;
    w->n_out = r1 - r0;
    return TD_OK;
}

/* Keeps columns [c0, c1) of every row of w (whole blocks), as an owned copy. */
static int slice_cols(loader *L, const char *name, td_weight *w, int64_t c0, int64_t c1) {
    const td_type_traits *tr = td_quant_traits(w->type);
    if (c0 % tr->block_elems || c1 % tr->block_elems)
        return td_err_set(L->err, TD_E_UNSUPPORTED,
                          "tensor '%s': a split across %d ranks cuts its rows at column %lld, inside a %s block of %u",
                          name, L->sh->size, (long long)(c0 % tr->block_elems ? c0 : c1), tr->name, tr->block_elems);
    size_t row = td_quant_row_bytes(w->type, w->n_in), off = td_quant_row_bytes(w->type, c0);
    size_t part = td_quant_row_bytes(w->type, c1 - c0);
    void *p = td_alloc((size_t)w->n_out * part);
    if (!p) return td_err_set(L->err, TD_E_NOMEM, "out of memory copying rank %d's slice of '%s'", L->sh->rank, name);
    for (int64_t o = 0; o < w->n_out; o++)
        memcpy((char *)p + (size_t)o * part, (const char *)w->data + (size_t)o * row + off, part);
    w->data = w->own = p;
    w->n_in = c1 - c0;
    return TD_OK;
}

/* Keeps elements [a, b) of an owned vector (a bias). */
static int slice_vector(loader *L, const char *name, float **v, int64_t a, int64_t b) {
    if (!*v || L->sh->size == 1) return TD_OK;
    float *p = td_alloc((size_t)(b - a) * sizeof(float));
    if (!p) return td_err_set(L->err, TD_E_NOMEM, "out of memory copying rank %d's slice of '%s'", L->sh->rank, name);
    memcpy(p, *v + a, (size_t)(b - a) * sizeof(float));
    td_free(*v);
    *v = p;
    return TD_OK;
}

/* Converts a 1-D tensor of n elements to an owned f32 array. */
static int load_vector(loader *L, const char *name, int64_t n, bool required, float **out) {
    *out = NULL;
    const td_gguf_tensor *t = td_gguf_find_tensor(L->g, name);
    if (!t) {
        if (!required) return TD_OK;
        return td_err_set(L->err, TD_E_FORMAT, "tensor '%s' is missing", name);
    }
    const td_type_traits *tr = td_quant_traits(t->type);
    if (!tr || !tr->to_float)
        return td_err_set(L->err, TD_E_UNSUPPORTED, "tensor '%s': type %u cannot be converted", name, t->type);
    if ((int64_t)t->ne[0] != n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1)
        return td_err_set(L->err, TD_E_FORMAT, "tensor '%s': expected %lld elements, has shape [%llu, %llu]",
                          name, (long long)n, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1]);
    if (n % tr->block_elems != 0)
        return td_err_set(L->err, TD_E_FORMAT, "tensor '%s': %lld elements is not a whole number of %s blocks",
                          name, (long long)n, tr->name);
    float *v = td_alloc((size_t)n * sizeof(float));
    if (!v) return td_err_set(L->err, TD_E_NOMEM, "out of memory converting '%s'", name);
    tr->to_float(t->data, v, n);
    *out = v;
    return TD_OK;
}

static int read_hparams(loader *L, td_hparams *hp) {
    int rc;
    snprintf(hp->arch, sizeof hp->arch, "%s", L->arch);
    if ((rc = get_u32(L, "embedding_length", true, 0, &hp->n_embd))) return rc;
    if ((rc = get_u32(L, "block_count", true, 0, &hp->n_layer))) return rc;
    if ((rc = get_u32(L, "feed_forward_length", true, 0, &hp->n_ff))) return rc;
    if ((rc = get_u32(L, "attention.head_count", true, 0, &hp->n_head))) return rc;
    if ((rc = get_u32(L, "attention.head_count_kv", false, hp->n_head, &hp->n_head_kv))) return rc;
    if ((rc = get_u32(L, "context_length", false, 2048, &hp->n_ctx_train))) return rc;
    if (hp->n_embd < 1 || hp->n_layer < 1 || hp->n_ff < 1 || hp->n_head < 1 || hp->n_head_kv < 1)
        return td_err_set(L->err, TD_E_FORMAT, "hyper-parameters: embedding, layers, ffn and heads must be positive");
    if (hp->n_head % hp->n_head_kv != 0)
        return td_err_set(L->err, TD_E_FORMAT, "hyper-parameters: %d heads not divisible by %d kv heads",
                          hp->n_head, hp->n_head_kv);
    if (hp->n_embd % hp->n_head != 0)
        return td_err_set(L->err, TD_E_FORMAT, "hyper-parameters: embedding %d not divisible by %d heads",
                          hp->n_embd, hp->n_head);
    if ((rc = get_u32(L, "attention.key_length", false, hp->n_embd / hp->n_head, &hp->head_dim))) return rc;
    int32_t v_len;
    if ((rc = get_u32(L, "attention.value_length", false, hp->head_dim, &v_len))) return rc;
    if (v_len != hp->head_dim)
        return td_err_set(L->err, TD_E_UNSUPPORTED, "key_length %d != value_length %d", hp->head_dim, v_len);
    if ((rc = get_u32(L, "rope.dimension_count", false, hp->head_dim, &hp->n_rot))) return rc;
    if (hp->head_dim < 2 || hp->head_dim % 2 || hp->n_rot < 2 || hp->n_rot % 2 || hp->n_rot > hp->head_dim)
        return td_err_set(L->err, TD_E_FORMAT, "hyper-parameters: head_dim %d / rope dims %d invalid",
                          hp->head_dim, hp->n_rot);
    if (hp->head_dim > TD_ATTN_MAX_HEAD_DIM)
        return td_err_set(L->err, TD_E_UNSUPPORTED, "head_dim %d (at most %d supported)", hp->head_dim,
                          TD_ATTN_MAX_HEAD_DIM);
    hp->rms_eps = get_f32(L, "attention.layer_norm_rms_epsilon", 1e-5f);
    hp->rope_base = get_f32(L, "rope.freq_base", 10000.0f);
    if (!(hp->rms_eps > 0) || !(hp->rope_base > 1) || !isfinite(hp->rope_base))
        return td_err_set(L->err, TD_E_FORMAT, "hyper-parameters: rms eps %g / rope base %g invalid",
                          (double)hp->rms_eps, (double)hp->rope_base);

    /* RoPE scaling: linear is a position divisor; anything else we refuse
     * rather than silently produce different logits. */
    hp->rope_freq_scale = 1.0f;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", L->arch);
    const char *stype;
    size_t slen;
    float factor = 0.0f;
    if (td_gguf_get_str(L->g, key, &stype, &slen)) {
        if (slen == 6 && memcmp(stype, "linear", 6) == 0) {
            factor = get_f32(L, "rope.scaling.factor", 1.0f);
        } else if (!(slen == 4 && memcmp(stype, "none", 4) == 0)) {
            return td_err_set(L->err, TD_E_UNSUPPORTED, "metadata '%s' = '%.*s': only none and linear are supported",
                              key, (int)slen, stype);
        }
    } else {
        factor = get_f32(L, "rope.scale_linear", 0.0f);
    }
    if (factor != 0.0f) {
        if (!(factor > 0) || !isfinite(factor))
            return td_err_set(L->err, TD_E_FORMAT, "rope scaling factor %g invalid", (double)factor);
        hp->rope_freq_scale = 1.0f / factor;
    }
    hp->rope_kind = strcmp(L->arch, "qwen2") == 0 ? TD_ROPE_NEOX : TD_ROPE_NORM;
    hp->qkv_bias = strcmp(L->arch, "qwen2") == 0;
    return TD_OK;
}

static int load_layer(loader *L, const td_hparams *hp, int32_t i, td_layer *ly) {
    char name[96];
    int rc;
    const td_shard *sh = L->sh;
    int64_t hd = hp->head_dim;
    int64_t q_dim = (int64_t)hp->n_head * hd;
    int64_t kv_dim = (int64_t)hp->n_head_kv * hd;
    int64_t q0 = sh->head0 * hd, q1 = (sh->head0 + sh->n_head) * hd;
    int64_t k0 = sh->kv_head0 * hd, k1 = (sh->kv_head0 + sh->n_head_kv) * hd;
    int64_t f0 = sh->ff0, f1 = sh->ff0 + sh->n_ff;
    bool split = sh->size > 1;
#define LAYER_NAME(s) (snprintf(name, sizeof name, "blk.%d." s, i), name)
    if ((rc = load_vector(L, LAYER_NAME("attn_norm.weight"), hp->n_embd, true, &ly->attn_norm))) return rc;
    if ((rc = load_vector(L, LAYER_NAME("ffn_norm.weight"), hp->n_embd, true, &ly->ffn_norm))) return rc;
    if ((rc = find_matrix(L, LAYER_NAME("attn_q.weight"), hp->n_embd, q_dim, true, &ly->wq)) ||
        (split && (rc = slice_rows(L, name, &ly->wq, q0, q1))))
        return rc;
    if ((rc = find_matrix(L, LAYER_NAME("attn_k.weight"), hp->n_embd, kv_dim, true, &ly->wk)) ||
        (split && (rc = slice_rows(L, name, &ly->wk, k0, k1))))
        return rc;
    if ((rc = find_matrix(L, LAYER_NAME("attn_v.weight"), hp->n_embd, kv_dim, true, &ly->wv)) ||
        (split && (rc = slice_rows(L, name, &ly->wv, k0, k1))))
        return rc;
    if ((rc = find_matrix(L, LAYER_NAME("attn_output.weight"), q_dim, hp->n_embd, true, &ly->wo)) ||
        (split && (rc = slice_cols(L, name, &ly->wo, q0, q1))))
        return rc;
    if ((rc = find_matrix(L, LAYER_NAME("ffn_gate.weight"), hp->n_embd, hp->n_ff, true, &ly->w_gate)) ||
        (split && (rc = slice_rows(L, name, &ly->w_gate, f0, f1))))
        return rc;
    if ((rc = find_matrix(L, LAYER_NAME("ffn_up.weight"), hp->n_embd, hp->n_ff, true, &ly->w_up)) ||
        (split && (rc = slice_rows(L, name, &ly->w_up, f0, f1))))
        return rc;
    if ((rc = find_matrix(L, LAYER_NAME("ffn_down.weight"), hp->n_ff, hp->n_embd, true, &ly->w_down)) ||
        (split && (rc = slice_cols(L, name, &ly->w_down, f0, f1))))
        return rc;
    if ((rc = load_vector(L, LAYER_NAME("attn_q.bias"), q_dim, hp->qkv_bias, &ly->bq)) ||
        (rc = slice_vector(L, name, &ly->bq, q0, q1)))
        return rc;
    if ((rc = load_vector(L, LAYER_NAME("attn_k.bias"), kv_dim, hp->qkv_bias, &ly->bk)) ||
        (rc = slice_vector(L, name, &ly->bk, k0, k1)))
        return rc;
    if ((rc = load_vector(L, LAYER_NAME("attn_v.bias"), kv_dim, hp->qkv_bias, &ly->bv)) ||
        (rc = slice_vector(L, name, &ly->bv, k0, k1)))
        return rc;
#undef LAYER_NAME
    return TD_OK;
}

/* FFN inputs per chunk of the invariant order: fixed by n_ff alone (never
 * by the number of ranks), the largest of 256..32 that divides it, so that
 * a chunk is whole blocks of every weight and activation type. */
static int32_t ff_chunk_of(int32_t n_ff) {
    for (int32_t c = 256; c >= 32; c /= 2)
        if (n_ff % c == 0) return c;
    return n_ff;
}

/* Which part rank holds; refuses a split that leaves a rank without
 * attention heads (or without FFN rows), naming the tensor. */
static int plan_shard(const td_hparams *hp, int32_t rank, int32_t size, td_shard *sh, td_err *err) {
    if (size < 1 || rank < 0 || rank >= size)
        return td_err_set(err, TD_E_ARG, "tensor parallelism: rank %d of %d", rank, size);
    int32_t group = hp->n_head / hp->n_head_kv;
    if (hp->n_head_kv < size)
        return td_err_set(err, TD_E_UNSUPPORTED,
                          "tensor 'blk.0.attn_k.weight': %d KV heads cannot be split across %d ranks "
                          "(a rank would hold no attention heads; at most %d ranks)",
                          hp->n_head_kv, size, hp->n_head_kv);
    int32_t ffc = ff_chunk_of(hp->n_ff);
    if (hp->n_ff / ffc < size)
        return td_err_set(err, TD_E_UNSUPPORTED,
                          "tensor 'blk.0.ffn_down.weight': %d FFN inputs in chunks of %d cannot be split across %d ranks",
                          hp->n_ff, ffc, size);
    int64_t lo, hi;
    *sh = (td_shard){.rank = rank, .size = size, .ff_chunk = ffc};
    td_shard_split(hp->n_head_kv, rank, size, &lo, &hi);
    sh->kv_head0 = (int32_t)lo;
    sh->n_head_kv = (int32_t)(hi - lo);
    sh->head0 = sh->kv_head0 * group;
    sh->n_head = sh->n_head_kv * group;
    td_shard_split(hp->n_ff / ffc, rank, size, &lo, &hi);
    sh->ff0 = (int32_t)(lo * ffc);
    sh->n_ff = (int32_t)((hi - lo) * ffc);
    td_shard_vocab(hp->n_vocab, rank, size, &lo, &hi);
    sh->vocab0 = (int32_t)lo;
    sh->n_vocab = (int32_t)(hi - lo);
    return TD_OK;
}

/* True when chunks of chunk_in inputs are whole blocks of w's type and of
 * its activations' type. */
static bool chunks_fit(const td_weight *w, int64_t chunk_in) {
    return td_quant_row_bytes(w->type, chunk_in) != 0 &&
           td_quant_row_bytes(td_quant_traits(w->type)->vec_dot_type, chunk_in) != 0;
}

static uint64_t matrix_bytes(const td_weight *w) {
    return (uint64_t)td_quant_row_bytes(w->type, w->n_in) * (uint64_t)w->n_out;
}

int td_model_load(const td_gguf *g, td_model **out, td_err *err) {
    return td_model_load_shard(g, 0, 1, out, err);
}

int td_model_load_shard(const td_gguf *g, int32_t rank, int32_t size, td_model **out, td_err *err) {
    *out = NULL;
    const char *arch;
    size_t arch_len;
    if (!td_gguf_get_str(g, "general.architecture", &arch, &arch_len))
        return td_err_set(err, TD_E_FORMAT, "metadata 'general.architecture' is missing");
    char arch_z[32];
    if (arch_len >= sizeof arch_z)
        return td_err_set(err, TD_E_UNSUPPORTED, "architecture name too long");
    memcpy(arch_z, arch, arch_len);
    arch_z[arch_len] = 0;
    if (strcmp(arch_z, "llama") != 0 && strcmp(arch_z, "qwen2") != 0)
        return td_err_set(err, TD_E_UNSUPPORTED, "architecture '%s' is not supported (llama, qwen2)", arch_z);

    int rc = TD_OK;
    td_model *m = calloc(1, sizeof *m);
    if (!m) return td_err_set(err, TD_E_NOMEM, "out of memory");
    if (pthread_mutex_init(&m->device_lock, NULL) != 0) {
        free(m);
        return td_err_set(err, TD_E_NOMEM, "cannot create the model's device lock");
    }
    loader L = {g, arch_z, err, &m->shard};
    td_hparams *hp = &m->hp;
    if ((rc = read_hparams(&L, hp))) goto fail;

    const td_gguf_tensor *emb = td_gguf_find_tensor(g, "token_embd.weight");
    if (!emb) { rc = td_err_set(err, TD_E_FORMAT, "tensor 'token_embd.weight' is missing"); goto fail; }
    if (emb->ne[1] < 1 || emb->ne[1] > (1u << 24)) {
        rc = td_err_set(err, TD_E_FORMAT, "tensor 'token_embd.weight': vocabulary of %llu rows",
                        (unsigned long long)emb->ne[1]);
        goto fail;
    }
    hp->n_vocab = (int32_t)emb->ne[1];
    if ((rc = plan_shard(hp, rank, size, &m->shard, err))) goto fail;
    const td_shard *sh = &m->shard;
    if ((rc = find_matrix(&L, "token_embd.weight", hp->n_embd, hp->n_vocab, true, &m->tok_embd))) goto fail;
    if ((rc = find_matrix(&L, "output.weight", hp->n_embd, hp->n_vocab, false, &m->output))) goto fail;
    hp->tied_output = m->output.data == NULL;
    /* split by vocabulary: the embedding too, tied or not (forward.c looks
     * a token up on the rank that holds its row) */
    if (size > 1 && (rc = slice_rows(&L, "token_embd.weight", &m->tok_embd, sh->vocab0, sh->vocab0 + sh->n_vocab)))
        goto fail;
    if (size > 1 && !hp->tied_output &&
        (rc = slice_rows(&L, "output.weight", &m->output, sh->vocab0, sh->vocab0 + sh->n_vocab)))
        goto fail;
    if (hp->tied_output) {
        m->output = m->tok_embd;
        m->output.own = NULL; /* one owner: tok_embd */
    }
    if ((rc = load_vector(&L, "output_norm.weight", hp->n_embd, true, &m->output_norm))) goto fail;
    if ((rc = load_vector(&L, "rope_freqs.weight", hp->n_rot / 2, false, &m->rope_factors))) goto fail;

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) { rc = td_err_set(err, TD_E_NOMEM, "out of memory"); goto fail; }
    for (int32_t i = 0; i < hp->n_layer; i++)
        if ((rc = load_layer(&L, hp, i, &m->layers[i]))) goto fail;

    m->weight_bytes = matrix_bytes(&m->output);
    for (int32_t i = 0; i < hp->n_layer; i++) {
        const td_layer *ly = &m->layers[i];
        m->weight_bytes += matrix_bytes(&ly->wq) + matrix_bytes(&ly->wk) + matrix_bytes(&ly->wv) +
                           matrix_bytes(&ly->wo) + matrix_bytes(&ly->w_gate) + matrix_bytes(&ly->w_up) +
                           matrix_bytes(&ly->w_down);
    }
    /* the invariant order cuts wo into one chunk per KV head's query heads
     * and w_down into ff_chunk inputs: whole blocks of the weights and of
     * their activations, or that order is unavailable */
    m->shard.chunks_ok = true;
    for (int32_t i = 0; i < hp->n_layer; i++) {
        const td_layer *ly = &m->layers[i];
        int64_t o_chunk = (int64_t)(hp->n_head / hp->n_head_kv) * hp->head_dim;
        if (!chunks_fit(&ly->wo, o_chunk) || !chunks_fit(&ly->w_down, m->shard.ff_chunk)) m->shard.chunks_ok = false;
    }
    if (size > 1) td_gguf_release_data(g); /* every slice is a copy now */
    *out = m;
    return TD_OK;
fail:
    td_model_free(m);
    return rc;
}

void td_model_free(td_model *m) {
    if (!m) return;
    if (m->layers) {
        for (int32_t i = 0; i < m->hp.n_layer; i++) {
            td_layer *ly = &m->layers[i];
            td_free(ly->attn_norm);
            td_free(ly->ffn_norm);
            td_free(ly->bq);
            td_free(ly->bk);
            td_free(ly->bv);
            td_weight *ws[7] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down};
            for (int k = 0; k < 7; k++) {
                td_free(ws[k]->own);
                td_free((void *)ws[k]->tiled);
            }
        }
        free(m->layers);
    }
    td_free(m->tok_embd.own);
    td_free(m->output.own);
    td_free((void *)m->output.tiled);
    td_free(m->output_norm);
    td_free(m->rope_factors);
    td_cuda_model_free(m->cuda);
    pthread_mutex_destroy(&m->device_lock);
    free(m);
}

const td_hparams *td_model_hparams(const td_model *m) { return &m->hp; }
uint64_t td_model_weight_bytes(const td_model *m) { return m->weight_bytes; }
int32_t td_model_tp_rank(const td_model *m) { return m->shard.rank; }
int32_t td_model_tp_size(const td_model *m) { return m->shard.size; }
