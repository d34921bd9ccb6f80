/* gguf.h — read-only access to GGUF v2/v3 model files.
 *
 * The file is mmapped (or a caller's buffer is borrowed) and parsed once at
 * open: every count, length, offset and tensor extent is checked before use,
 * so after a successful open every pointer handed out lies inside the mapping.
 * A failed open fills td_err with one line naming the key or tensor at fault.
 * Strings handed out are NOT NUL-terminated unless stated: use the lengths.
 */
#ifndef TD_GGUF_H
#define TD_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

typedef enum td_gguf_vtype {
    TD_GGUF_U8 = 0, TD_GGUF_I8 = 1, TD_GGUF_U16 = 2, TD_GGUF_I16 = 3,
    TD_GGUF_U32 = 4, TD_GGUF_I32 = 5, TD_GGUF_F32 = 6, TD_GGUF_BOOL = 7,
    TD_GGUF_STRING = 8, TD_GGUF_ARRAY = 9, TD_GGUF_U64 = 10, TD_GGUF_I64 = 11,
    TD_GGUF_F64 = 12, TD_GGUF_VTYPE_COUNT = 13,
} td_gguf_vtype;

typedef struct td_gguf td_gguf;
typedef struct td_gguf_kv td_gguf_kv; /* opaque; use the accessors below */

typedef struct td_gguf_tensor {
    const char *name;   /* NUL-terminated copy, owned by the td_gguf */
    uint32_t type;      /* ggml type id (quant.h td_type) */
    uint32_t n_dims;    /* 1..4 */
    uint64_t ne[4];     /* ne[0] is the contiguous row length; unused dims = 1 */
    uint64_t offset;    /* from the start of the data section */
    uint64_t nbytes;    /* checked: offset + nbytes within the file */
    const void *data;   /* points into the mapping */
} td_gguf_tensor;

/* Opens and validates a file. On failure returns a TD_E_* code, *out = NULL. */
int td_gguf_open(const char *path, td_gguf **out, td_err *err);
/* Same over a caller-owned buffer that must outlive the td_gguf (fuzzing). */
int td_gguf_open_memory(const void *data, size_t size, td_gguf **out, td_err *err);
void td_gguf_close(td_gguf *g); /* accepts NULL */

uint32_t td_gguf_version(const td_gguf *g);
size_t td_gguf_file_size(const td_gguf *g);
const void *td_gguf_file_data(const td_gguf *g); /* whole mapping (for sha256) */
uint64_t td_gguf_alignment(const td_gguf *g);   /* general.alignment or 32 */
uint64_t td_gguf_data_offset(const td_gguf *g); /* file offset of the data section */
/* Drops this process's resident pages of the tensor data (a tensor-parallel
 * rank that copied its slices); a later read faults them back in from the
 * file, so every pointer stays valid. No-op for a borrowed buffer. */
void td_gguf_release_data(const td_gguf *g);
/* "u32", "string", "array", ...; "?" for an unknown id. */
const char *td_gguf_vtype_name(td_gguf_vtype t);

/* ---- metadata ---- */
size_t td_gguf_kv_count(const td_gguf *g);
const td_gguf_kv *td_gguf_kv_at(const td_gguf *g, size_t i);
const td_gguf_kv *td_gguf_find(const td_gguf *g, const char *key); /* NULL if absent */
const char *td_gguf_kv_key(const td_gguf_kv *kv);   /* NUL-terminated */
td_gguf_vtype td_gguf_kv_type(const td_gguf_kv *kv);

/* Typed getters: false when the key is absent or of an incompatible type.
 * get_u64 accepts any integer type holding a non-negative value; get_f32 any
 * float or integer type; get_str a string (not NUL-terminated). */
bool td_gguf_get_u64(const td_gguf *g, const char *key, uint64_t *out);
bool td_gguf_get_f32(const td_gguf *g, const char *key, float *out);
bool td_gguf_get_bool(const td_gguf *g, const char *key, bool *out);
bool td_gguf_get_str(const td_gguf *g, const char *key, const char **s, size_t *len);

/* Scalar value of a kv (same coercions as above). */
bool td_gguf_kv_u64(const td_gguf_kv *kv, uint64_t *out);
bool td_gguf_kv_i64(const td_gguf_kv *kv, int64_t *out);
bool td_gguf_kv_f64(const td_gguf_kv *kv, double *out);
bool td_gguf_kv_str(const td_gguf_kv *kv, const char **s, size_t *len);

/* Arrays: element type and count; element access with bounds checks
 * (return false when i is out of range or the element type does not fit). */
td_gguf_vtype td_gguf_arr_type(const td_gguf_kv *kv); /* TD_GGUF_VTYPE_COUNT if not an array */
uint64_t td_gguf_arr_len(const td_gguf_kv *kv);
bool td_gguf_arr_str(const td_gguf_kv *kv, uint64_t i, const char **s, size_t *len);
bool td_gguf_arr_i64(const td_gguf_kv *kv, uint64_t i, int64_t *out);  /* integer / bool elements */
bool td_gguf_arr_f64(const td_gguf_kv *kv, uint64_t i, double *out);  /* float or integer elements */

/* ---- tensors ---- */
size_t td_gguf_tensor_count(const td_gguf *g);
const td_gguf_tensor *td_gguf_tensor_at(const td_gguf *g, size_t i);
const td_gguf_tensor *td_gguf_find_tensor(const td_gguf *g, const char *name);

/* ---- writer (tests and the tiny-model tool) ----
 * Builds a GGUF v3 file in memory: add kvs and tensors, then save. */
typedef struct td_gguf_writer td_gguf_writer;
td_gguf_writer *td_gguf_writer_create(void);
void td_gguf_writer_destroy(td_gguf_writer *w);
int td_gguf_writer_add_u32(td_gguf_writer *w, const char *key, uint32_t v);
int td_gguf_writer_add_f32(td_gguf_writer *w, const char *key, float v);
int td_gguf_writer_add_bool(td_gguf_writer *w, const char *key, bool v);
int td_gguf_writer_add_str(td_gguf_writer *w, const char *key, const char *v);
int td_gguf_writer_add_str_array(td_gguf_writer *w, const char *key, const char *const *v, size_t n);
int td_gguf_writer_add_f32_array(td_gguf_writer *w, const char *key, const float *v, size_t n);
int td_gguf_writer_add_i32_array(td_gguf_writer *w, const char *key, const int32_t *v, size_t n);
/* data is copied (NULL: zeros): nbytes = td_quant_row_bytes(type, ne[0]) * ne[1]*ne[2]*ne[3] */
int td_gguf_writer_add_tensor(td_gguf_writer *w, const char *name, uint32_t type,
                              uint32_t n_dims, const uint64_t *ne, const void *data);
int td_gguf_writer_save(td_gguf_writer *w, const char *path, td_err *err);

/* Additions for tests and tools. add_scalar: v points to a C value of the
 * matching type (uint8_t .. double; `bool` for TD_GGUF_BOOL); add_array: v is a
 * C array of n such values (fixed-size element types only). add_raw appends
 * an already-encoded value (the bytes after the type field) unchecked: nested
 * arrays, and malformed files for tests. Keys must be unique and non-empty. */
int td_gguf_writer_add_scalar(td_gguf_writer *w, const char *key, td_gguf_vtype type, const void *v);
int td_gguf_writer_add_array(td_gguf_writer *w, const char *key, td_gguf_vtype elem_type,
                             const void *v, size_t n);
int td_gguf_writer_add_raw(td_gguf_writer *w, const char *key, td_gguf_vtype type,
                           const void *encoded, size_t nbytes);
/* The whole file in one malloc'ed buffer; the caller frees it with free(). */
int td_gguf_writer_to_memory(td_gguf_writer *w, void **out, size_t *size, td_err *err);

#endif
