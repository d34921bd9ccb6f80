/* tok_export.c — the tokenizer's part of a GGUF file as a GGUF of its own:
 * every tokenizer.* key plus general.architecture and general.name, no
 * tensors. A coordinator that has no model file builds the same tokenizer
 * from it (td_gguf_open_memory + td_tok_create), so token ids agree with the
 * workers'.
 */
#include <stdlib.h>
#include <string.h>

#include "gguf/gguf.h"
#include "tok/tok.h"

static bool wanted(const char *key) {
    return strncmp(key, "tokenizer.", 10) == 0 || strcmp(key, "general.architecture") == 0 ||
           strcmp(key, "general.name") == 0;
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

static int copy_string_array(td_gguf_writer *w, const td_gguf_kv *kv, const char *key) {
    uint64_t n = td_gguf_arr_len(kv);
    char **v = calloc(n ? n : 1, sizeof *v);
    int rc = v ? TD_OK : TD_E_NOMEM;
    for (uint64_t i = 0; i < n && rc == TD_OK; i++) {
        const char *s;
        size_t len;
        if (!td_gguf_arr_str(kv, i, &s, &len)) rc = TD_E_FORMAT;
        else if (!(v[i] = dup_n(s, len))) rc = TD_E_NOMEM;
    }
    /* pieces with an embedded NUL cannot travel this way: refuse, never truncate */
    for (uint64_t i = 0; i < n && rc == TD_OK; i++) {
        const char *s;
        size_t len;
        td_gguf_arr_str(kv, i, &s, &len);
        if (strlen(v[i]) != len) rc = TD_E_UNSUPPORTED;
    }
    if (rc == TD_OK) rc = td_gguf_writer_add_str_array(w, key, (const char *const *)v, (size_t)n);
    if (v)
        for (uint64_t i = 0; i < n; i++) free(v[i]);
    free(v);
    return rc;
}

static int copy_number_array(td_gguf_writer *w, const td_gguf_kv *kv, const char *key) {
    td_gguf_vtype et = td_gguf_arr_type(kv);
    uint64_t n = td_gguf_arr_len(kv);
    bool is_float = et == TD_GGUF_F32 || et == TD_GGUF_F64;
    size_t esz = is_float ? sizeof(float) : sizeof(int32_t);
    void *buf = malloc((n ? n : 1) * esz);
    if (!buf) return TD_E_NOMEM;
    for (uint64_t i = 0; i < n; i++) {
        if (is_float) {
            double d;
            if (!td_gguf_arr_f64(kv, i, &d)) { free(buf); return TD_E_FORMAT; }
            ((float *)buf)[i] = (float)d;
        } else {
            int64_t x;
            if (!td_gguf_arr_i64(kv, i, &x) || x < INT32_MIN || x > INT32_MAX) { free(buf); return TD_E_UNSUPPORTED; }
            ((int32_t *)buf)[i] = (int32_t)x;
        }
    }
    int rc = is_float ? td_gguf_writer_add_f32_array(w, key, buf, (size_t)n)
                      : td_gguf_writer_add_i32_array(w, key, buf, (size_t)n);
    free(buf);
    return rc;
}

static int copy_kv(td_gguf_writer *w, const td_gguf *g, const td_gguf_kv *kv) {
    const char *key = td_gguf_kv_key(kv);
    td_gguf_vtype t = td_gguf_kv_type(kv);
    if (t == TD_GGUF_STRING) {
        const char *s;
        size_t len;
        if (!td_gguf_kv_str(kv, &s, &len)) return TD_E_FORMAT;
        char *c = dup_n(s, len);
        if (!c) return TD_E_NOMEM;
        int rc = td_gguf_writer_add_str(w, key, c);
        free(c);
        return rc;
    }
    if (t == TD_GGUF_ARRAY) {
        td_gguf_vtype et = td_gguf_arr_type(kv);
        if (et == TD_GGUF_STRING) return copy_string_array(w, kv, key);
        if (et == TD_GGUF_ARRAY || et == TD_GGUF_BOOL) return TD_E_UNSUPPORTED;
        return copy_number_array(w, kv, key);
    }
    if (t == TD_GGUF_BOOL) {
        bool b;
        if (!td_gguf_get_bool(g, key, &b)) return TD_E_FORMAT;
        return td_gguf_writer_add_bool(w, key, b);
    }
    if (t == TD_GGUF_F32 || t == TD_GGUF_F64) {
        double d;
        if (!td_gguf_kv_f64(kv, &d)) return TD_E_FORMAT;
        return td_gguf_writer_add_f32(w, key, (float)d);
    }
    int64_t x;
    if (!td_gguf_kv_i64(kv, &x) || x < 0 || x > UINT32_MAX) return TD_E_UNSUPPORTED;
    return td_gguf_writer_add_u32(w, key, (uint32_t)x);
}

int td_tok_export_gguf(const td_gguf *g, void **out, size_t *size, td_err *err) {
    *out = NULL;
    *size = 0;
    td_gguf_writer *w = td_gguf_writer_create();
    if (!w) return td_err_set(err, TD_E_NOMEM, "out of memory");
    int rc = TD_OK;
    for (size_t i = 0; i < td_gguf_kv_count(g) && rc == TD_OK; i++) {
        const td_gguf_kv *kv = td_gguf_kv_at(g, i);
        if (!wanted(td_gguf_kv_key(kv))) continue;
        if ((rc = copy_kv(w, g, kv)))
            td_err_set(err, rc, "tokenizer export: key %s: %s", td_gguf_kv_key(kv), td_err_name(rc));
    }
    if (rc == TD_OK) rc = td_gguf_writer_to_memory(w, out, size, err);
    td_gguf_writer_destroy(w);
    return rc;
}
