/* fuzz_gguf.c — libFuzzer target for the GGUF reader: opens the input from
 * memory and, when it opens, walks every kv through every accessor and reads
 * the first and last byte of every tensor, so any pointer or length the
 * reader hands out that strays outside the input trips the sanitizers.
 * Build: clang -fsanitize=fuzzer,address,undefined (CMake: -DTANDEM_FUZZ=ON).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gguf/gguf.h"

#define MAX_WALK 4096 /* elements walked per array; the ends are always read */

static uint64_t sink_bytes(const void *p, size_t n) {
    const volatile uint8_t *b = p;
    return n ? (uint64_t)b[0] + b[n - 1] : 0;
}

static uint64_t walk_kv(const td_gguf *g, const td_gguf_kv *kv) {
    uint64_t acc = 0, u;
    int64_t i;
    double f;
    float f32;
    bool bo;
    const char *s;
    size_t n;
    const char *key = td_gguf_kv_key(kv);

    acc += sink_bytes(key, strlen(key) + 1);
    if (td_gguf_find(g, key) != kv) __builtin_trap(); /* keys are unique */
    acc += (uint64_t)td_gguf_kv_type(kv);
    if (td_gguf_kv_u64(kv, &u)) acc += u;
    if (td_gguf_kv_i64(kv, &i)) acc += (uint64_t)i;
    if (td_gguf_kv_f64(kv, &f)) acc += (uint64_t)(f == f);
    if (td_gguf_kv_str(kv, &s, &n)) acc += sink_bytes(s, n);
    if (td_gguf_get_u64(g, key, &u)) acc += u;
    if (td_gguf_get_f32(g, key, &f32)) acc += (uint64_t)(f32 == f32);
    if (td_gguf_get_bool(g, key, &bo)) acc += bo;
    if (td_gguf_get_str(g, key, &s, &n)) acc += sink_bytes(s, n);

    uint64_t len = td_gguf_arr_len(kv);
    acc += (uint64_t)td_gguf_arr_type(kv);
    for (uint64_t k = 0; k < len; k++) {
        if (k == MAX_WALK && len - 2 > MAX_WALK) k = len - 2; /* skip to the tail */
        if (td_gguf_arr_str(kv, k, &s, &n)) acc += sink_bytes(s, n);
        if (td_gguf_arr_i64(kv, k, &i)) acc += (uint64_t)i;
        if (td_gguf_arr_f64(kv, k, &f)) acc += (uint64_t)(f == f);
    }
    /* out of range must be refused */
    if (td_gguf_arr_str(kv, len, &s, &n) || td_gguf_arr_i64(kv, len, &i) ||
        td_gguf_arr_f64(kv, len, &f))
        __builtin_trap();
    return acc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    td_gguf *g = NULL;
    td_err err;
    volatile uint64_t acc = 0;
    if (td_gguf_open_memory(data, size, &g, &err) != TD_OK) {
        if (g || !err.msg[0]) __builtin_trap(); /* failures say why and return nothing */
        return 0;
    }
    acc += td_gguf_version(g) + td_gguf_file_size(g) + td_gguf_alignment(g) +
           td_gguf_data_offset(g) + sink_bytes(td_gguf_file_data(g), td_gguf_file_size(g));
    for (size_t k = 0; k < td_gguf_kv_count(g); k++) acc += walk_kv(g, td_gguf_kv_at(g, k));
    if (td_gguf_kv_at(g, td_gguf_kv_count(g))) __builtin_trap();
    for (size_t k = 0; k < td_gguf_tensor_count(g); k++) {
        const td_gguf_tensor *t = td_gguf_tensor_at(g, k);
        if (td_gguf_find_tensor(g, t->name) != t) __builtin_trap();
        if (t->n_dims < 1 || t->n_dims > 4 || t->offset % td_gguf_alignment(g)) __builtin_trap();
        acc += t->type + t->ne[0] + t->ne[1] + t->ne[2] + t->ne[3] + t->nbytes;
        acc += sink_bytes(t->data, (size_t)t->nbytes);
        acc += sink_bytes(t->name, strlen(t->name) + 1);
    }
    if (td_gguf_tensor_at(g, td_gguf_tensor_count(g))) __builtin_trap();
    td_gguf_close(g);
    (void)acc;
    return 0;
}
