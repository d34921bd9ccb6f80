/* gguf_write.c — builds GGUF v3 files (alignment 32) for tests and tools.
 * kvs are encoded into one buffer as they are added; tensor data is copied;
 * save/to_memory lay the file out. Inputs are checked (unique non-empty names,
 * supported tensor types, sizes) so that every file it writes reads back;
 * add_raw is the one unchecked door, kept for nested arrays and broken files.
 */
#include "gguf/gguf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"

#define GGUF_MAGIC 0x46554747u
#define WRITER_ALIGNMENT 32
#define MAX_NAME_LEN 65535

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

typedef struct wtensor {
    char *name;
    uint32_t type, n_dims;
    uint64_t ne[4];
    uint8_t *data;   /* nbytes, owned */
    uint64_t nbytes;
    uint64_t offset; /* set by layout() */
} wtensor;

struct td_gguf_writer {
    buf kvs;       /* encoded kv section */
    char **keys;   /* copies, for the duplicate check */
    size_t n_keys, cap_keys;
    wtensor *tensors;
    size_t n_tensors, cap_tensors;
};

static const uint8_t zeros[WRITER_ALIGNMENT];

/* ---- byte buffer ---- */

static int buf_put(buf *b, const void *d, size_t n) {
    if (n > SIZE_MAX - b->n) return TD_E_NOMEM;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) {
            if (cap > SIZE_MAX / 2) return TD_E_NOMEM;
            cap *= 2;
        }
        uint8_t *p = realloc(b->p, cap);
        if (!p) return TD_E_NOMEM;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
    return TD_OK;
}

static void le_bytes(uint8_t *out, uint64_t v, int n) {
    for (int i = 0; i < n; i++) out[i] = (uint8_t)(v >> (8 * i));
}
static int put_u32(buf *b, uint32_t v) {
    uint8_t x[4];
    le_bytes(x, v, 4);
    return buf_put(b, x, 4);
}
static int put_u64(buf *b, uint64_t v) {
    uint8_t x[8];
    le_bytes(x, v, 8);
    return buf_put(b, x, 8);
}
static int put_str(buf *b, const char *s, size_t n) {
    int rc = put_u64(b, n);
    return rc ? rc : buf_put(b, s, n);
}

/* Encodes the C value at v as fixed-size type t; returns its size (0: not a
 * fixed-size type). */
static size_t encode_scalar(td_gguf_vtype t, const void *v, uint8_t out[8]) {
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    switch (t) {
    case TD_GGUF_U8: case TD_GGUF_I8: memcpy(&u8, v, 1); out[0] = u8; return 1;
    case TD_GGUF_BOOL: out[0] = *(const bool *)v ? 1 : 0; return 1;
    case TD_GGUF_U16: case TD_GGUF_I16: memcpy(&u16, v, 2); le_bytes(out, u16, 2); return 2;
    case TD_GGUF_U32: case TD_GGUF_I32: case TD_GGUF_F32:
        memcpy(&u32, v, 4); le_bytes(out, u32, 4); return 4;
    case TD_GGUF_U64: case TD_GGUF_I64: case TD_GGUF_F64:
        memcpy(&u64, v, 8); le_bytes(out, u64, 8); return 8;
    default: return 0;
    }
}

/* C object size of a fixed-size type (bool is the C bool). */
static size_t c_size(td_gguf_vtype t) {
    switch (t) {
    case TD_GGUF_U8: case TD_GGUF_I8: return 1;
    case TD_GGUF_BOOL: return sizeof(bool);
    case TD_GGUF_U16: case TD_GGUF_I16: return 2;
    case TD_GGUF_U32: case TD_GGUF_I32: case TD_GGUF_F32: return 4;
    case TD_GGUF_U64: case TD_GGUF_I64: case TD_GGUF_F64: return 8;
    default: return 0;
    }
}

/* ---- lifecycle ---- */

td_gguf_writer *td_gguf_writer_create(void) { return calloc(1, sizeof(td_gguf_writer)); }

void td_gguf_writer_destroy(td_gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_keys; i++) free(w->keys[i]);
    for (size_t i = 0; i < w->n_tensors; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    free(w->keys);
    free(w->tensors);
    free(w->kvs.p);
    free(w);
}

/* ---- kvs ----
 * kv_begin validates the key and encodes key + type; the caller appends the
 * value; kv_end records the key, or rolls the buffer back on failure so a
 * failed add leaves the writer as it was. */

static int kv_begin(td_gguf_writer *w, const char *key, td_gguf_vtype t, size_t *mark) {
    if (!w || !key || !*key || strlen(key) > MAX_NAME_LEN || (unsigned)t >= TD_GGUF_VTYPE_COUNT)
        return TD_E_ARG;
    for (size_t i = 0; i < w->n_keys; i++)
        if (strcmp(w->keys[i], key) == 0) return TD_E_ARG;
    *mark = w->kvs.n;
    int rc = put_str(&w->kvs, key, strlen(key));
    if (!rc) rc = put_u32(&w->kvs, (uint32_t)t);
    if (rc) w->kvs.n = *mark;
    return rc;
}

static int kv_end(td_gguf_writer *w, const char *key, size_t mark, int rc) {
    char *copy = NULL;
    if (rc) goto fail;
    rc = TD_E_NOMEM;
    if (w->n_keys == w->cap_keys) {
        size_t cap = w->cap_keys ? 2 * w->cap_keys : 16;
        char **k = realloc(w->keys, cap * sizeof *k);
        if (!k) goto fail;
        w->keys = k;
        w->cap_keys = cap;
    }
    if (!(copy = strdup(key))) goto fail;
    w->keys[w->n_keys++] = copy;
    return TD_OK;
fail:
    w->kvs.n = mark;
    return rc;
}

int td_gguf_writer_add_scalar(td_gguf_writer *w, const char *key, td_gguf_vtype type,
                              const void *v) {
    uint8_t enc[8];
    size_t mark;
    if (!v || !c_size(type)) return TD_E_ARG;
    int rc = kv_begin(w, key, type, &mark);
    if (rc) return rc;
    size_t n = encode_scalar(type, v, enc);
    return kv_end(w, key, mark, buf_put(&w->kvs, enc, n));
}

int td_gguf_writer_add_u32(td_gguf_writer *w, const char *key, uint32_t v) {
    return td_gguf_writer_add_scalar(w, key, TD_GGUF_U32, &v);
}
int td_gguf_writer_add_f32(td_gguf_writer *w, const char *key, float v) {
    return td_gguf_writer_add_scalar(w, key, TD_GGUF_F32, &v);
}
int td_gguf_writer_add_bool(td_gguf_writer *w, const char *key, bool v) {
    return td_gguf_writer_add_scalar(w, key, TD_GGUF_BOOL, &v);
}

int td_gguf_writer_add_str(td_gguf_writer *w, const char *key, const char *v) {
    size_t mark;
    if (!v) return TD_E_ARG;
    int rc = kv_begin(w, key, TD_GGUF_STRING, &mark);
    if (rc) return rc;
    return kv_end(w, key, mark, put_str(&w->kvs, v, strlen(v)));
}

int td_gguf_writer_add_array(td_gguf_writer *w, const char *key, td_gguf_vtype elem_type,
                             const void *v, size_t n) {
    size_t mark, csz = c_size(elem_type);
    if (!csz || (!v && n)) return TD_E_ARG;
    int rc = kv_begin(w, key, TD_GGUF_ARRAY, &mark);
    if (rc) return rc;
    rc = put_u32(&w->kvs, (uint32_t)elem_type);
    if (!rc) rc = put_u64(&w->kvs, n);
    for (size_t i = 0; i < n && !rc; i++) {
        uint8_t enc[8];
        size_t k = encode_scalar(elem_type, (const uint8_t *)v + i * csz, enc);
        rc = buf_put(&w->kvs, enc, k);
    }
    return kv_end(w, key, mark, rc);
}

int td_gguf_writer_add_f32_array(td_gguf_writer *w, const char *key, const float *v, size_t n) {
    return td_gguf_writer_add_array(w, key, TD_GGUF_F32, v, n);
}
int td_gguf_writer_add_i32_array(td_gguf_writer *w, const char *key, const int32_t *v, size_t n) {
    return td_gguf_writer_add_array(w, key, TD_GGUF_I32, v, n);
}

int td_gguf_writer_add_str_array(td_gguf_writer *w, const char *key, const char *const *v,
                                 size_t n) {
    size_t mark;
    if (!v && n) return TD_E_ARG;
    for (size_t i = 0; i < n; i++)
        if (!v[i]) return TD_E_ARG;
    int rc = kv_begin(w, key, TD_GGUF_ARRAY, &mark);
    if (rc) return rc;
    rc = put_u32(&w->kvs, TD_GGUF_STRING);
    if (!rc) rc = put_u64(&w->kvs, n);
    for (size_t i = 0; i < n && !rc; i++) rc = put_str(&w->kvs, v[i], strlen(v[i]));
    return kv_end(w, key, mark, rc);
}

int td_gguf_writer_add_raw(td_gguf_writer *w, const char *key, td_gguf_vtype type,
                           const void *encoded, size_t nbytes) {
    size_t mark;
    if (!encoded && nbytes) return TD_E_ARG;
    int rc = kv_begin(w, key, type, &mark);
    if (rc) return rc;
    return kv_end(w, key, mark, buf_put(&w->kvs, encoded, nbytes));
}

/* ---- tensors ---- */

int td_gguf_writer_add_tensor(td_gguf_writer *w, const char *name, uint32_t type,
                              uint32_t n_dims, const uint64_t *ne, const void *data) {
    wtensor t = {.type = type, .n_dims = n_dims, .ne = {1, 1, 1, 1}};
    int rc = TD_E_ARG;
    if (!w || !name || !*name || strlen(name) > MAX_NAME_LEN || !ne || n_dims < 1 || n_dims > 4)
        return TD_E_ARG;
    for (size_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0) return TD_E_ARG;
    const td_type_traits *tr = td_quant_traits(type);
    if (!tr || !(tr->weight_ok || type == TD_TYPE_F32) || !tr->block_elems)
        return TD_E_UNSUPPORTED;
    uint64_t nelem = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        t.ne[d] = ne[d];
        if (ne[d] == 0 || !td_mul_u64(nelem, ne[d], &nelem) || nelem > INT64_MAX) return TD_E_ARG;
    }
    if (t.ne[0] % tr->block_elems) return TD_E_ARG;
    uint64_t nb;
    if (!td_mul_u64(t.ne[0] / tr->block_elems, tr->block_bytes, &nb) ||
        !td_mul_u64(nb, t.ne[1] * t.ne[2] * t.ne[3], &nb) || nb > SIZE_MAX)
        return TD_E_ARG;
    t.nbytes = nb;

    rc = TD_E_NOMEM;
    if (w->n_tensors == w->cap_tensors) {
        size_t cap = w->cap_tensors ? 2 * w->cap_tensors : 16;
        wtensor *p = realloc(w->tensors, cap * sizeof *p);
        if (!p) goto fail;
        w->tensors = p;
        w->cap_tensors = cap;
    }
    if (!(t.name = strdup(name))) goto fail;
    if (!(t.data = malloc(nb ? (size_t)nb : 1))) goto fail;
    if (data) memcpy(t.data, data, (size_t)nb);
    else memset(t.data, 0, (size_t)nb);
    w->tensors[w->n_tensors++] = t;
    return TD_OK;
fail:
    free(t.name);
    free(t.data);
    return rc;
}

/* ---- layout and output ---- */

static uint64_t align_up(uint64_t x) {
    return (x + WRITER_ALIGNMENT - 1) & ~(uint64_t)(WRITER_ALIGNMENT - 1);
}

/* Everything before the data section (header, kvs, tensor infos, padding);
 * assigns tensor offsets and the total file size. */
static int build_head(td_gguf_writer *w, buf *head, uint64_t *total) {
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        w->tensors[i].offset = off;
        if (!td_add_u64(off, w->tensors[i].nbytes, &off) || off > UINT64_MAX - WRITER_ALIGNMENT)
            return TD_E_RANGE;
        off = align_up(off);
    }
    int rc = put_u32(head, GGUF_MAGIC);
    if (!rc) rc = put_u32(head, 3);
    if (!rc) rc = put_u64(head, w->n_tensors);
    if (!rc) rc = put_u64(head, w->n_keys);
    if (!rc) rc = buf_put(head, w->kvs.p, w->kvs.n);
    for (size_t i = 0; i < w->n_tensors && !rc; i++) {
        const wtensor *t = &w->tensors[i];
        rc = put_str(head, t->name, strlen(t->name));
        if (!rc) rc = put_u32(head, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims && !rc; d++) rc = put_u64(head, t->ne[d]);
        if (!rc) rc = put_u32(head, t->type);
        if (!rc) rc = put_u64(head, t->offset);
    }
    if (!rc) rc = buf_put(head, zeros, (size_t)(align_up(head->n) - head->n));
    if (!rc && !td_add_u64(head->n, off, total)) rc = TD_E_RANGE;
    return rc;
}

/* Output goes either to a FILE or into a buffer of the exact size. */
typedef struct sink {
    FILE *f;
    uint8_t *mem;
    size_t pos;
} sink;

static int sink_put(sink *s, const void *p, size_t n) {
    if (s->f) return fwrite(p, 1, n, s->f) == n ? TD_OK : TD_E_IO;
    memcpy(s->mem + s->pos, p, n);
    s->pos += n;
    return TD_OK;
}

static int emit(td_gguf_writer *w, const buf *head, sink *s) {
    int rc = sink_put(s, head->p, head->n);
    for (size_t i = 0; i < w->n_tensors && !rc; i++) {
        const wtensor *t = &w->tensors[i];
        rc = sink_put(s, t->data, (size_t)t->nbytes);
        if (!rc) rc = sink_put(s, zeros, (size_t)(align_up(t->nbytes) - t->nbytes));
    }
    return rc;
}

int td_gguf_writer_to_memory(td_gguf_writer *w, void **out, size_t *size, td_err *err) {
    buf head = {0};
    sink s = {0};
    uint64_t total;
    int rc;
    if (!w || !out || !size) return td_err_set(err, TD_E_ARG, "gguf writer: NULL argument");
    *out = NULL;
    *size = 0;
    if ((rc = build_head(w, &head, &total))) {
        td_err_set(err, rc, "gguf writer: out of memory laying out the file");
        goto fail;
    }
    if (total > SIZE_MAX || !(s.mem = malloc((size_t)total))) {
        rc = td_err_set(err, TD_E_NOMEM, "gguf writer: out of memory for %llu bytes",
                        (unsigned long long)total);
        goto fail;
    }
    emit(w, &head, &s); /* memory sinks cannot fail */
    free(head.p);
    *out = s.mem;
    *size = s.pos;
    return TD_OK;
fail:
    free(head.p);
    free(s.mem);
    return rc;
}

int td_gguf_writer_save(td_gguf_writer *w, const char *path, td_err *err) {
    buf head = {0};
    sink s = {0};
    uint64_t total;
    int rc;
    if (!w || !path) return td_err_set(err, TD_E_ARG, "gguf writer: NULL argument");
    if ((rc = build_head(w, &head, &total))) {
        td_err_set(err, rc, "gguf writer: out of memory laying out the file");
        goto fail;
    }
    if (!(s.f = fopen(path, "wb"))) {
        rc = td_err_set(err, TD_E_IO, "cannot create '%s': %s", path, strerror(errno));
        goto fail;
    }
    rc = emit(w, &head, &s);
    int saved = errno;
    if (fclose(s.f) != 0 && !rc) {
        rc = TD_E_IO;
        saved = errno;
    }
    s.f = NULL;
    if (rc) {
        td_err_set(err, rc, "cannot write '%s': %s", path, strerror(saved));
        remove(path);
        goto fail;
    }
    free(head.p);
    return TD_OK;
fail:
    free(head.p);
    return rc;
}
