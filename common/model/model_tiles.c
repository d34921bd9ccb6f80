/* model_tiles.c — the tiled copies of a model's weights for FAST's
 * column-wise kernels (quant.h, td_quant_tile), made once per model by the
 * first pass a CPU context computes in FAST. The GGUF bytes stay as they
 * are: the reference order, the CUDA upload and the embedding lookup read
 * them; a model that only ever computes the reference order never pays for
 * the copies.
 */
#define _DEFAULT_SOURCE /* madvise's MADV_PAGEOUT */
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/model_internal.h"

/* The GGUF bytes of a weight now read from its tiled copy are left to the
 * kernel to reclaim: on the file's mapping they come back from the file if
 * anything reads them again (the embedding lookup takes a few rows; a
 * context switched to the reference order, all), so a FAST process keeps
 * one copy of each weight resident, not two (peak RSS of `generate` on the
 * default model: 229 MB without this, docs/benchmarks.md). On anonymous
 * memory MADV_PAGEOUT can only swap, never lose data; where the kernel
 * lacks it, nothing happens. Only whole pages inside the weight. */
static void let_go(const void *data, size_t bytes) {
    const long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) return;
    const uintptr_t p = (uintptr_t)page, a = ((uintptr_t)data + p - 1) / p * p, b = ((uintptr_t)data + bytes) / p * p;
#ifdef MADV_PAGEOUT
    if (a < b) (void)madvise((void *)a, b - a, MADV_PAGEOUT);
#else
    (void)a, (void)b;
#endif
}

/* Every weight a FAST pass multiplies: the layers' seven and the output
 * head (the token embedding is looked up, not multiplied). */
static int weights_of(td_model *m, td_weight **out, int cap) {
    int n = 0;
    for (int32_t l = 0; l < m->hp.n_layer && n + 7 <= cap; l++) {
        td_layer *ly = &m->layers[l];
        td_weight *ws[7] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down};
        for (int k = 0; k < 7; k++) out[n++] = ws[k];
    }
    if (n < cap) out[n++] = &m->output;
    return n;
}

static bool tile_all(td_model *m) {
    const int cap = 7 * m->hp.n_layer + 1;
    td_weight **ws = malloc((size_t)cap * sizeof *ws);
    if (!ws) return false;
    const int n = weights_of(m, ws, cap);
    bool any = false, ok = true;
    uint64_t bytes = 0;
    for (int i = 0; i < n && ok; i++) {
        td_weight *w = ws[i];
        const size_t tb = td_quant_tiled_bytes(w->type, w->n_in, w->n_out);
        if (tb == 0) continue;
        void *t = td_alloc(tb);
        if (!t || td_quant_tile(w->type, w->data, w->n_in, w->n_out, t) != TD_OK) {
            td_free(t);
            ok = false;
            break;
        }
        w->tiled = t;
        bytes += tb;
        any = true;
        if (!w->own) let_go(w->data, td_quant_row_bytes(w->type, w->n_in) * (size_t)w->n_out);
    }
    if (!ok) { /* all or nothing: a half-tiled model would only confuse the figures */
        for (int i = 0; i < n; i++) {
            td_free((void *)ws[i]->tiled);
            ws[i]->tiled = NULL;
        }
        bytes = 0;
        any = false;
    }
    free(ws);
    m->tiled_bytes = bytes;
    return any;
}

bool td_model_tile(const td_model *cm) {
    td_model *m = (td_model *)cm; /* only the tiled copies are written, once, under the lock */
    pthread_mutex_lock(&m->device_lock);
    if (!m->tiles_done) {
        tile_all(m);
        m->tiles_done = true;
    }
    const bool have = m->tiled_bytes > 0;
    pthread_mutex_unlock(&m->device_lock);
    return have;
}
