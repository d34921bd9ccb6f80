/* model_device.c — naming devices ("cpu", "cuda:N") and handing the model's
 * weights to the CUDA backend: the model (a tensor-parallel rank: its part)
 * is described to it in cuda.h's plain terms and uploaded once, on the
 * first context that asks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"

int td_device_parse(const char *s, td_device *out, td_err *err) {
    if (!s) return td_err_set(err, TD_E_ARG, "no device named");
    if (!strcmp(s, "cpu")) {
        *out = (td_device){TD_DEVICE_CPU, 0};
        return TD_OK;
    }
    if (!strncmp(s, "cuda", 4) && (s[4] == 0 || s[4] == ':')) {
        long idx = TD_DEVICE_LOCAL;
        if (s[4] == ':') {
            char *end;
            idx = strtol(s + 5, &end, 10);
            if (end == s + 5 || *end || idx < 0 || idx > 255)
                return td_err_set(err, TD_E_ARG, "device '%s': expected cuda:N with N a device number", s);
        }
        *out = (td_device){TD_DEVICE_CUDA, (int32_t)idx};
        return TD_OK;
    }
    return td_err_set(err, TD_E_ARG, "unknown device '%s' (cpu, cuda or cuda:N)", s);
}

td_device td_device_resolve(td_device d) {
    if (d.kind != TD_DEVICE_CUDA || d.index != TD_DEVICE_LOCAL) return d;
    d.index = 0;
    /* the launchers' names for a process's rank on its node (OpenMPI,
     * MPICH's hydra, Slurm), as the NCCL backend reads them */
    static const char *const names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *v = getenv(names[i]);
        char *end;
        long local = v && *v ? strtol(v, &end, 10) : -1;
        if (local < 0 || *end) continue;
        int n = td_cuda_device_count(NULL);
        if (n > 0) d.index = (int32_t)(local % n);
        break;
    }
    return d;
}

void td_device_format(td_device d, char *buf, size_t cap) {
    if (d.kind == TD_DEVICE_CPU) snprintf(buf, cap, "cpu");
    else if (d.index == TD_DEVICE_LOCAL) snprintf(buf, cap, "cuda");
    else snprintf(buf, cap, "cuda:%d", d.index);
}

static td_cuda_weight cw(const td_weight *w) { return (td_cuda_weight){w->data, w->type, w->n_in, w->n_out}; }

/* The layers' host weights in cuda.h's terms; NULL when out of memory. */
static td_cuda_layer *describe_layers(const td_model *m) {
    td_cuda_layer *layers = calloc((size_t)m->hp.n_layer, sizeof *layers);
    if (!layers) return NULL;
    for (int32_t l = 0; l < m->hp.n_layer; l++) {
        const td_layer *s = &m->layers[l];
        layers[l] = (td_cuda_layer){s->attn_norm, s->ffn_norm, cw(&s->wq), cw(&s->wk), cw(&s->wv), cw(&s->wo),
                                    cw(&s->w_gate), cw(&s->w_up), cw(&s->w_down), s->bq, s->bk, s->bv};
    }
    return layers;
}

int td_model_cuda_chunks(const td_model *cm, td_err *err) {
    td_model *m = (td_model *)cm; /* only the device copy is written, under the lock */
    const td_hparams *hp = &m->hp;
    const td_shard *sh = &m->shard;
    const int32_t group = hp->n_head / hp->n_head_kv;
    if (!sh->chunks_ok)
        return td_err_set(err, TD_E_UNSUPPORTED,
                          "numerics tp-invariant: chunks of %d attention / %d FFN inputs are not whole blocks of "
                          "this model's weight types", group * hp->head_dim, sh->ff_chunk);
    pthread_mutex_lock(&m->device_lock);
    int rc = TD_OK;
    if (!m->cuda) {
        rc = td_err_set(err, TD_E_ARG, "the model is not on a CUDA device yet");
    } else if (!td_cuda_model_has_chunks(m->cuda)) {
        td_cuda_layer *layers = describe_layers(m);
        td_cuda_chunks_desc d = {
            .attn_chunk = group * hp->head_dim, .ff_chunk = sh->ff_chunk,
            .attn0 = sh->kv_head0, .n_attn = sh->n_head_kv, .n_attn_all = hp->n_head_kv,
            .ff0 = sh->ff0 / sh->ff_chunk, .n_ff = sh->n_ff / sh->ff_chunk, .n_ff_all = hp->n_ff / sh->ff_chunk,
            .layers = layers,
        };
        rc = layers ? td_cuda_model_upload_chunks(m->cuda, &d, err) : td_err_set(err, TD_E_NOMEM, "out of memory");
        free(layers);
    }
    pthread_mutex_unlock(&m->device_lock);
    return rc;
}

int td_model_cuda(const td_model *cm, int32_t index, td_cuda_model **out, td_err *err) {
    td_model *m = (td_model *)cm; /* only the device copy is written, under the lock */
    *out = NULL;
    int rc = TD_OK;
    pthread_mutex_lock(&m->device_lock);
    if (m->cuda) {
        if (td_cuda_model_device(m->cuda) != index)
            rc = td_err_set(err, TD_E_UNSUPPORTED, "this model is already on cuda:%d; one device per loaded model",
                            td_cuda_model_device(m->cuda));
        else
            *out = m->cuda;
        pthread_mutex_unlock(&m->device_lock);
        return rc;
    }
    const td_hparams *hp = &m->hp;
    const td_shard *sh = &m->shard; /* a tensor-parallel rank's part: its heads, FFN and vocabulary rows */
    td_cuda_layer *layers = describe_layers(m);
    if (!layers) {
        pthread_mutex_unlock(&m->device_lock);
        return td_err_set(err, TD_E_NOMEM, "out of memory");
    }
    td_cuda_model_desc d = {
        .n_vocab = hp->n_vocab, .n_embd = hp->n_embd, .n_layer = hp->n_layer, .n_ff = sh->n_ff,
        .n_head = sh->n_head, .n_head_kv = sh->n_head_kv, .head_dim = hp->head_dim, .n_rot = hp->n_rot,
        .rope_neox = hp->rope_kind == TD_ROPE_NEOX, .rms_eps = hp->rms_eps,
        .tok_embd = cw(&m->tok_embd), .output = cw(&m->output), .output_norm = m->output_norm, .layers = layers,
        .vocab0 = sh->vocab0, .n_vocab_rows = sh->n_vocab,
    };
    rc = td_cuda_model_upload(&d, index, &m->cuda, err);
    free(layers);
    if (rc == TD_OK) *out = m->cuda;
    pthread_mutex_unlock(&m->device_lock);
    return rc;
}
