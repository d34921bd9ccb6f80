/* cuda_absent.c — the CUDA backend's device calls in a build without CUDA
 * (-DTANDEM_CUDA=OFF, the default): each says so instead of failing later. */
#include <stdio.h>

#include "cuda/cuda.h"

#define ABSENT(err) td_err_set(err, TD_E_UNSUPPORTED, "this tandem was built without CUDA (configure with -DTANDEM_CUDA=ON)")

bool td_cuda_compiled(void) { return false; }
int td_cuda_device_count(td_err *err) { ABSENT(err); return 0; }
int td_cuda_device_name(int device, char *buf, size_t cap, td_err *err) {
    (void)device;
    if (cap) buf[0] = 0;
    return ABSENT(err);
}
int td_cuda_model_upload(const td_cuda_model_desc *d, int device, td_cuda_model **out, td_err *err) {
    (void)d, (void)device;
    *out = NULL;
    return ABSENT(err);
}
void td_cuda_model_free(td_cuda_model *m) { (void)m; }
size_t td_cuda_model_bytes(const td_cuda_model *m) { (void)m; return 0; }
int td_cuda_model_device(const td_cuda_model *m) { (void)m; return -1; }
int td_cuda_kv_create(const td_cuda_model *m, int32_t max_seqs, int32_t max_len, td_cuda_kv **out, td_err *err) {
    (void)m, (void)max_seqs, (void)max_len;
    *out = NULL;
    return ABSENT(err);
}
void td_cuda_kv_free(td_cuda_kv *kv) { (void)kv; }
size_t td_cuda_kv_bytes(const td_cuda_kv *kv) { (void)kv; return 0; }
int td_cuda_kv_compact(td_cuda_kv *kv, int32_t seq, int32_t base, const int32_t *keep, int32_t n_keep, td_err *err) {
    (void)kv, (void)seq, (void)base, (void)keep, (void)n_keep;
    return ABSENT(err);
}
int td_cuda_ctx_create(const td_cuda_model *m, int32_t max_rows, td_cuda_ctx **out, td_err *err) {
    (void)m, (void)max_rows;
    *out = NULL;
    return ABSENT(err);
}
void td_cuda_ctx_free(td_cuda_ctx *c) { (void)c; }
void td_cuda_ctx_use_graphs(td_cuda_ctx *c, bool on) { (void)c, (void)on; }
void td_cuda_ctx_set_fast(td_cuda_ctx *c, bool fast) { (void)c, (void)fast; }
int td_cuda_model_upload_chunks(td_cuda_model *m, const td_cuda_chunks_desc *d, td_err *err) {
    (void)m, (void)d;
    return ABSENT(err);
}
bool td_cuda_model_has_chunks(const td_cuda_model *m) {
    (void)m;
    return false;
}
int td_cuda_ctx_set_invariant(td_cuda_ctx *c, bool on, td_err *err) {
    (void)c, (void)on;
    return ABSENT(err);
}
bool td_cuda_ctx_invariant(const td_cuda_ctx *c) {
    (void)c;
    return false;
}
bool td_cuda_ctx_fast(const td_cuda_ctx *c) {
    (void)c;
    return false;
}
int td_cuda_ctx_set_group(td_cuda_ctx *c, const td_cuda_group *g, td_err *err) {
    (void)c, (void)g;
    return ABSENT(err);
}
int td_cuda_forward(td_cuda_ctx *c, td_cuda_kv *kv, const td_cuda_pass *p, float *logits, td_err *err) {
    (void)c, (void)kv, (void)p, (void)logits;
    return ABSENT(err);
}
int td_cuda_logits_row(td_cuda_ctx *c, int32_t j, float *out, td_err *err) {
    (void)c, (void)j, (void)out;
    return ABSENT(err);
}
int td_cuda_ctx_profile(const td_cuda_ctx *c, char *buf, size_t cap) {
    (void)c;
    return snprintf(buf, cap, "no profile (built without CUDA)");
}
