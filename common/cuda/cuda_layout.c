/* cuda_layout.c — how weight matrices sit in device memory, and the host-side
 * checks of what the CUDA backend can run. Pure host code, compiled in every
 * build, so the layout is tested on machines without a GPU.
 *
 * A GGUF block interleaves its fp16 scale(s) with its codes (Q8_0: 34 bytes,
 * so codes are only 2-byte aligned). For Q4_1 and Q8_0 a thread owns one 32-bit
 * word of codes of every block of a row (word w: elements 4w..4w+3, or for
 * Q4 the nibbles of bytes 4w..4w+3) and reads four blocks' words in one
 * 16-byte load. So a row is stored word-plane by word-plane: plane w holds
 * word w of each block, the row's block count padded to a multiple of four
 * with zeros; the fp16 scales (and Q4_1 minimums) follow the same padding.
 * A K-quant super-block (256 elements) keeps its GGUF bytes, padded to whole
 * 32-bit words (Q6_K: 210 to 212), so that a thread reads its codes and the
 * scales as words (cuda_kquant.cuh). A Q4_0, Q5_0 or Q5_1 block is repacked
 * to whole words, codes first, then Q5's fifth bits, then the fp16 d (and
 * m) (cuda_interleaved.cuh). Float matrices (F32, F16, BF16) stay as they
 * are, row after row. Nothing is re-quantized.
 */
#include <string.h>

#include "cuda/cuda.h"
#include "quant/quant.h"

enum { QK = 32, QK_K = 256 };

static bool is_kquant(uint32_t type) {
    return type == TD_TYPE_Q4_K || type == TD_TYPE_Q5_K || type == TD_TYPE_Q6_K;
}

static bool is_float(uint32_t type) { return type == TD_TYPE_F32 || type == TD_TYPE_F16 || type == TD_TYPE_BF16; }

static bool is_interleaved(uint32_t type) {
    return type == TD_TYPE_Q4_0 || type == TD_TYPE_Q5_0 || type == TD_TYPE_Q5_1;
}

bool td_cuda_type_supported(uint32_t type) {
    return type == TD_TYPE_Q4_1 || type == TD_TYPE_Q8_0 || is_interleaved(type) || is_kquant(type) || is_float(type);
}

/* Words of a repacked Q4_0/Q5_0/Q5_1 block: 4 of codes, Q5's fifth bits,
 * then d (and m). */
static int il_words(uint32_t type) { return type == TD_TYPE_Q4_0 ? 5 : 6; }

/* Byte offsets of the fifth bits and of the codes in a GGUF Q4_0/Q5_x block
 * (d comes first, then Q5_1's m). */
static size_t il_qh_at(uint32_t type) { return type == TD_TYPE_Q5_0 ? 2 : 4; }
static size_t il_qs_at(uint32_t type) { return type == TD_TYPE_Q4_0 ? 2 : il_qh_at(type) + 4; }

/* Bytes of a K-quant super-block on the device: whole words. */
static size_t kq_block_bytes(uint32_t type) { return (td_quant_traits(type)->block_bytes + 3) / 4 * 4; }

/* Bytes of codes per block, and the offset of the codes in a GGUF block. */
static int codes_bytes(uint32_t type) { return type == TD_TYPE_Q8_0 ? 32 : 16; }
static int codes_offset(uint32_t type) { return type == TD_TYPE_Q4_1 ? 4 : 2; } /* Q4_1, Q8_0 */

int64_t td_cuda_layout_padded_blocks(int64_t n_in) { return (n_in / QK + 3) / 4 * 4; }

int td_cuda_layout_of(uint32_t type, int64_t n_in, int64_t n_out, td_cuda_layout *out, td_err *err) {
    if (!td_cuda_type_supported(type)) {
        const td_type_traits *tr = td_quant_traits(type);
        return td_err_set(err, TD_E_UNSUPPORTED,
                          "the CUDA backend has no kernel for %s weights (it runs Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "
                          "Q4_K, Q5_K, Q6_K, F32, F16, BF16)",
                          tr && tr->name ? tr->name : "unknown");
    }
    if (is_kquant(type)) {
        if (n_in <= 0 || n_out <= 0 || n_in % QK_K != 0)
            return td_err_set(err, TD_E_ARG, "matrix of %lld x %lld is not whole super-blocks of %d", (long long)n_out,
                              (long long)n_in, QK_K);
        out->qs_bytes = (size_t)(n_in / QK_K) * (size_t)n_out * kq_block_bytes(type);
        out->d_bytes = out->m_bytes = 0;
        return TD_OK;
    }
    if (n_in <= 0 || n_out <= 0 || n_in % QK != 0)
        return td_err_set(err, TD_E_ARG, "matrix of %lld x %lld is not whole blocks of %d", (long long)n_out,
                          (long long)n_in, QK);
    if (is_interleaved(type)) {
        out->qs_bytes = (size_t)(n_in / QK) * (size_t)n_out * (size_t)il_words(type) * 4;
        out->d_bytes = out->m_bytes = 0;
        return TD_OK;
    }
    if (is_float(type)) { /* rows of whole 32s: a warp's 32 accumulators */
        out->qs_bytes = (size_t)n_in * (size_t)n_out * td_quant_traits(type)->block_bytes;
        out->d_bytes = out->m_bytes = 0;
        return TD_OK;
    }
    size_t blocks = (size_t)td_cuda_layout_padded_blocks(n_in) * (size_t)n_out;
    out->qs_bytes = blocks * (size_t)codes_bytes(type);
    out->d_bytes = blocks * sizeof(uint16_t);
    out->m_bytes = type == TD_TYPE_Q4_1 ? blocks * sizeof(uint16_t) : 0;
    return TD_OK;
}

void td_cuda_layout_pack(uint32_t type, const void *src, int64_t n_in, int64_t n_out, void *qs, uint16_t *d,
                         uint16_t *m) {
    const td_type_traits *tr = td_quant_traits(type);
    const unsigned char *s = src;
    if (is_kquant(type)) {
        size_t padded = kq_block_bytes(type), blocks = (size_t)(n_in / QK_K) * (size_t)n_out;
        unsigned char *q = qs;
        memset(qs, 0, blocks * padded);
        for (size_t i = 0; i < blocks; i++) memcpy(q + i * padded, s + i * tr->block_bytes, tr->block_bytes);
        return;
    }
    if (is_float(type)) {
        memcpy(qs, src, (size_t)n_in * (size_t)n_out * tr->block_bytes);
        return;
    }
    if (is_interleaved(type)) { /* codes, (fifth bits), d | m << 16 */
        const size_t blocks = (size_t)(n_in / QK) * (size_t)n_out, words = (size_t)il_words(type);
        uint32_t *q = qs;
        memset(qs, 0, blocks * words * 4);
        for (size_t i = 0; i < blocks; i++, s += tr->block_bytes) {
            uint32_t *b = q + i * words;
            uint16_t d, m = 0;
            memcpy(b, s + il_qs_at(type), 16);
            memcpy(&d, s, 2);
            if (type == TD_TYPE_Q5_1) memcpy(&m, s + 2, 2);
            if (type != TD_TYPE_Q4_0) memcpy(&b[4], s + il_qh_at(type), 4);
            b[words - 1] = (uint32_t)d | (uint32_t)m << 16;
        }
        return;
    }
    int64_t nb = n_in / QK, nbp = td_cuda_layout_padded_blocks(n_in);
    int words = codes_bytes(type) / 4, co = codes_offset(type);
    uint32_t *q = qs;
    memset(qs, 0, (size_t)n_out * (size_t)nbp * (size_t)words * 4);
    memset(d, 0, (size_t)n_out * (size_t)nbp * sizeof(uint16_t));
    if (m) memset(m, 0, (size_t)n_out * (size_t)nbp * sizeof(uint16_t));
    for (int64_t o = 0; o < n_out; o++)
        for (int64_t i = 0; i < nb; i++, s += tr->block_bytes) {
            memcpy(&d[o * nbp + i], s, sizeof(uint16_t));
            if (type == TD_TYPE_Q4_1) memcpy(&m[o * nbp + i], s + 2, sizeof(uint16_t));
            for (int w = 0; w < words; w++) memcpy(&q[(o * words + w) * nbp + i], s + co + 4 * w, 4);
        }
}

void td_cuda_layout_row(uint32_t type, const void *qs, const uint16_t *d, const uint16_t *m, int64_t n_in, int64_t o,
                        float *out) {
    if (is_kquant(type)) {
        const td_type_traits *tr = td_quant_traits(type);
        size_t padded = kq_block_bytes(type), nsb = (size_t)(n_in / QK_K);
        const unsigned char *row = (const unsigned char *)qs + (size_t)o * nsb * padded;
        for (size_t i = 0; i < nsb; i++) tr->to_float(row + i * padded, out + i * QK_K, QK_K);
        return;
    }
    if (is_float(type)) {
        const td_type_traits *tr = td_quant_traits(type);
        tr->to_float((const unsigned char *)qs + (size_t)o * (size_t)n_in * tr->block_bytes, out, n_in);
        return;
    }
    if (is_interleaved(type)) { /* back to the GGUF block, then to_float */
        const td_type_traits *tr = td_quant_traits(type);
        const size_t nb = (size_t)(n_in / QK), words = (size_t)il_words(type);
        const uint32_t *row = (const uint32_t *)qs + (size_t)o * nb * words;
        for (size_t i = 0; i < nb; i++) {
            unsigned char blk[24];
            const uint32_t *b = row + i * words;
            const uint16_t d = (uint16_t)(b[words - 1] & 0xFFFF), m = (uint16_t)(b[words - 1] >> 16);
            memcpy(blk, &d, 2);
            if (type == TD_TYPE_Q5_1) memcpy(blk + 2, &m, 2);
            if (type != TD_TYPE_Q4_0) memcpy(blk + il_qh_at(type), &b[4], 4);
            memcpy(blk + il_qs_at(type), b, 16);
            tr->to_float(blk, out + i * QK, QK);
        }
        return;
    }
    int64_t nb = n_in / QK, nbp = td_cuda_layout_padded_blocks(n_in);
    int words = codes_bytes(type) / 4;
    const uint32_t *q = qs;
    for (int64_t i = 0; i < nb; i++, out += QK) {
        unsigned char c[32];
        for (int w = 0; w < words; w++) memcpy(c + 4 * w, &q[(o * words + w) * nbp + i], 4);
        float dd = td_fp16_to_f32(d[o * nbp + i]);
        if (type == TD_TYPE_Q8_0) {
            for (int j = 0; j < QK; j++) out[j] = (float)(int8_t)c[j] * dd;
        } else {
            float mm = td_fp16_to_f32(m[o * nbp + i]);
            for (int j = 0; j < 16; j++) {
                out[j] = (float)(c[j] & 0x0F) * dd + mm;
                out[j + 16] = (float)(c[j] >> 4) * dd + mm;
            }
        }
    }
}

static int check_weight(const char *name, int32_t layer, const td_cuda_weight *w, td_err *err) {
    td_cuda_layout lay;
    int rc = td_cuda_layout_of(w->type, w->n_in, w->n_out, &lay, err);
    if (rc == TD_OK) return TD_OK;
    td_err inner = {0};
    if (err) memcpy(&inner, err, sizeof inner);
    if (layer >= 0) return td_err_set(err, rc, "blk.%d.%s: %s", layer, name, inner.msg);
    return td_err_set(err, rc, "%s: %s", name, inner.msg);
}

int td_cuda_check_model(const td_cuda_model_desc *d, td_err *err) {
    if (!d || !d->layers || d->n_layer < 1)
        return td_err_set(err, TD_E_ARG, "no model to check");
    if (d->head_dim > 256 || d->head_dim % 8 != 0 || d->n_rot > d->head_dim || d->n_rot % 2 != 0)
        return td_err_set(err, TD_E_UNSUPPORTED, "the CUDA backend needs a head size that is a multiple of 8 up to 256 (got %d)",
                          d->head_dim);
    if (d->n_head % d->n_head_kv != 0)
        return td_err_set(err, TD_E_ARG, "%d heads do not split into %d KV groups", d->n_head, d->n_head_kv);
    int32_t rows = d->n_vocab_rows ? d->n_vocab_rows : d->n_vocab;
    if (d->n_vocab < 1 || d->vocab0 < 0 || rows < 1 || rows > d->n_vocab - d->vocab0)
        return td_err_set(err, TD_E_ARG, "vocabulary rows [%d, %d + %d) of %d tokens", d->vocab0, d->vocab0, rows,
                          d->n_vocab);
    if (d->tok_embd.n_out != rows || d->output.n_out != rows)
        return td_err_set(err, TD_E_ARG, "token_embd has %lld rows and output %lld: expected %d",
                          (long long)d->tok_embd.n_out, (long long)d->output.n_out, rows);
    int rc;
    if ((rc = check_weight("token_embd", -1, &d->tok_embd, err))) return rc;
    if ((rc = check_weight("output", -1, &d->output, err))) return rc;
    for (int32_t l = 0; l < d->n_layer; l++) {
        const td_cuda_layer *ly = &d->layers[l];
        const td_cuda_weight *ws[7] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down};
        static const char *const names[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
        for (int i = 0; i < 7; i++)
            if ((rc = check_weight(names[i], l, ws[i], err))) return rc;
    }
    return TD_OK;
}
