/* gguf_read.c — the GGUF v2/v3 reader: parses and validates the whole file once
 * at open (an mmap or a borrowed buffer), then serves kvs and tensors from it.
 * Promise: no input makes the parser read outside the buffer, overflow, loop
 * longer than O(file size) or allocate more than a small multiple of the file
 * size; after a successful open every pointer handed out lies in the buffer.
 * Multi-byte fields are decoded as little-endian bytes, whatever the host.
 */
#include "gguf/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant/quant.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */
#define DEFAULT_ALIGNMENT 32
#define MAX_NAME_LEN 65535     /* keys and tensor names */
#define MAX_ARRAY_DEPTH 8      /* levels of arrays, the outermost included */
#define ARENA_CHUNK 65536
/* Far above real files (tens of kvs, thousands of tensors) and low enough
 * that the per-entry tables stay in the hundreds of MiB at worst. */
#define MAX_ENTRIES (1u << 20) /* kvs, and tensors */
/* Smallest encodings, so counts can be bounded by the bytes that remain
 * before anything is allocated for them. */
#define MIN_KV_BYTES 14    /* key length 8 + 1 key byte + type 4 + 1 value byte */
#define MIN_TINFO_BYTES 33 /* name length 8 + 1 + n_dims 4 + one dim 8 + type 4 + offset 8 */
#define MIN_STRING_BYTES 8 /* length field of an empty string */
#define MIN_ARRAY_BYTES 12 /* element type 4 + count 8 of an empty array */

typedef union scalar {
    uint64_t u; /* unsigned integers and bool */
    int64_t i;  /* signed integers */
    double f;   /* f32, f64 */
} scalar;

typedef struct str_ref {
    const char *p;
    uint64_t len;
} str_ref;

struct td_gguf_kv {
    const char *key; /* NUL-terminated copy in the arena */
    td_gguf_vtype type;
    scalar v;                 /* fixed-size scalar types */
    const char *str;          /* TD_GGUF_STRING, in the buffer */
    uint64_t str_len;
    td_gguf_vtype arr_type;   /* TD_GGUF_ARRAY: element type */
    uint64_t arr_len;
    const uint8_t *arr_data;  /* fixed-size elements, packed, in the buffer */
    const str_ref *arr_strs;  /* string elements: index built at open */
};

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    unsigned char mem[]; /* 8-byte aligned: the header is three words */
} arena_chunk;

typedef struct name_slot {
    const char *name;
    size_t len;
    size_t idx1; /* index + 1; 0 marks an empty slot */
} name_slot;

/* Open-addressing hash of names: finds duplicates while parsing (so a hostile
 * file with many entries cannot make the check quadratic) and serves lookups. */
typedef struct name_table {
    name_slot *slot;
    size_t mask;
} name_table;

struct td_gguf {
    const uint8_t *data;
    size_t size;
    bool mapped; /* data is our mmap: unmap on close */
    uint32_t version;
    uint64_t alignment;
    uint64_t data_offset;
    size_t n_kv;
    td_gguf_kv *kvs;
    size_t n_tensors;
    td_gguf_tensor *tensors;
    name_table kv_names;
    name_table tensor_names;
    arena_chunk *arena; /* keys, tensor names, string-array indexes */
};

typedef struct parser {
    const uint8_t *p;
    uint64_t size;
    uint64_t pos;
    td_err *err;
    td_gguf *g;
    char what[128]; /* the item being parsed, for messages: "kv 'x'" */
} parser;

static const uint8_t vtype_size[TD_GGUF_VTYPE_COUNT] = {
    [TD_GGUF_U8] = 1, [TD_GGUF_I8] = 1, [TD_GGUF_U16] = 2, [TD_GGUF_I16] = 2,
    [TD_GGUF_U32] = 4, [TD_GGUF_I32] = 4, [TD_GGUF_F32] = 4, [TD_GGUF_BOOL] = 1,
    [TD_GGUF_STRING] = 0, [TD_GGUF_ARRAY] = 0, [TD_GGUF_U64] = 8,
    [TD_GGUF_I64] = 8, [TD_GGUF_F64] = 8,
};

static const char *const vtype_names[TD_GGUF_VTYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
    "string", "array", "u64", "i64", "f64",
};

const char *td_gguf_vtype_name(td_gguf_vtype t) {
    return (unsigned)t < TD_GGUF_VTYPE_COUNT ? vtype_names[t] : "?";
}

static bool is_unsigned(td_gguf_vtype t) {
    return t == TD_GGUF_U8 || t == TD_GGUF_U16 || t == TD_GGUF_U32 || t == TD_GGUF_U64;
}
static bool is_signed(td_gguf_vtype t) {
    return t == TD_GGUF_I8 || t == TD_GGUF_I16 || t == TD_GGUF_I32 || t == TD_GGUF_I64;
}
static bool is_float(td_gguf_vtype t) { return t == TD_GGUF_F32 || t == TD_GGUF_F64; }

/* ---- little-endian decoding ---- */

static uint16_t le16(const uint8_t *b) { return (uint16_t)(b[0] | b[1] << 8); }
static uint32_t le32(const uint8_t *b) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
static uint64_t le64(const uint8_t *b) { return (uint64_t)le32(b) | (uint64_t)le32(b + 4) << 32; }

/* b holds vtype_size[t] bytes of a fixed-size type. */
static scalar decode_scalar(td_gguf_vtype t, const uint8_t *b) {
    scalar s = {0};
    switch (t) {
    case TD_GGUF_U8: case TD_GGUF_BOOL: s.u = b[0]; break;
    case TD_GGUF_I8: s.i = (int8_t)b[0]; break;
    case TD_GGUF_U16: s.u = le16(b); break;
    case TD_GGUF_I16: s.i = (int16_t)le16(b); break;
    case TD_GGUF_U32: s.u = le32(b); break;
    case TD_GGUF_I32: s.i = (int32_t)le32(b); break;
    case TD_GGUF_U64: s.u = le64(b); break;
    case TD_GGUF_I64: { uint64_t u = le64(b); memcpy(&s.i, &u, 8); break; }
    case TD_GGUF_F32: { uint32_t u = le32(b); float f; memcpy(&f, &u, 4); s.f = f; break; }
    case TD_GGUF_F64: { uint64_t u = le64(b); memcpy(&s.f, &u, 8); break; }
    default: break;
    }
    return s;
}

/* ---- coercions shared by the kv and array-element accessors ---- */

static bool scalar_u64(td_gguf_vtype t, scalar s, uint64_t *out) {
    if (is_unsigned(t)) { *out = s.u; return true; }
    if (is_signed(t) && s.i >= 0) { *out = (uint64_t)s.i; return true; }
    return false;
}
static bool scalar_i64(td_gguf_vtype t, scalar s, bool allow_bool, int64_t *out) {
    if (is_signed(t)) { *out = s.i; return true; }
    if ((is_unsigned(t) || (allow_bool && t == TD_GGUF_BOOL)) && s.u <= INT64_MAX) {
        *out = (int64_t)s.u;
        return true;
    }
    return false;
}
static bool scalar_f64(td_gguf_vtype t, scalar s, double *out) {
    if (is_float(t)) *out = s.f;
    else if (is_signed(t)) *out = (double)s.i;
    else if (is_unsigned(t)) *out = (double)s.u;
    else return false;
    return true;
}

/* ---- arena and name table ---- */

static void *arena_alloc(arena_chunk **head, size_t n) {
    if (n > SIZE_MAX - 8 - sizeof(arena_chunk)) return NULL;
    n = (n + 7) & ~(size_t)7;
    arena_chunk *c = *head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
        c = malloc(sizeof *c + cap);
        if (!c) return NULL;
        c->next = *head;
        c->used = 0;
        c->cap = cap;
        *head = c;
    }
    void *p = c->mem + c->used;
    c->used += n;
    return p;
}

static void arena_free(arena_chunk *c) {
    while (c) {
        arena_chunk *next = c->next;
        free(c);
        c = next;
    }
}

/* n is bounded by the file size / MIN_*_BYTES, so the doubling cannot wrap. */
static int table_init(name_table *t, size_t n) {
    size_t cap = 8;
    while (cap < 2 * n) cap *= 2;
    t->slot = calloc(cap, sizeof *t->slot);
    t->mask = cap - 1;
    return t->slot ? TD_OK : TD_E_NOMEM;
}

static size_t table_probe(const name_table *t, const char *name, size_t len) {
    size_t i = (size_t)td_fnv1a64(TD_FNV1A64_INIT, name, len) & t->mask;
    while (t->slot[i].idx1 &&
           !(t->slot[i].len == len && memcmp(t->slot[i].name, name, len) == 0))
        i = (i + 1) & t->mask;
    return i;
}

/* Inserts name -> idx; false when the name is already present. */
static bool table_insert(name_table *t, const char *name, size_t len, size_t idx) {
    size_t i = table_probe(t, name, len);
    if (t->slot[i].idx1) return false;
    t->slot[i] = (name_slot){name, len, idx + 1};
    return true;
}

/* Index of name, or SIZE_MAX when absent (or the table is empty). */
static size_t table_lookup(const name_table *t, const char *name) {
    if (!t->slot || !name) return SIZE_MAX;
    size_t i = table_probe(t, name, strlen(name));
    return t->slot[i].idx1 ? t->slot[i].idx1 - 1 : SIZE_MAX;
}

/* ---- parsing ---- */

/* "kind 'name'" with the name cut to 80 bytes and made printable, because
 * names come from the file and messages go to terminals and logs. */
static void describe(char *dst, size_t cap, const char *kind, const uint8_t *s, uint64_t len) {
    char tmp[84];
    size_t show = len > 80 ? 80 : (size_t)len;
    for (size_t i = 0; i < show; i++)
        tmp[i] = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\'') ? (char)s[i] : '?';
    tmp[show] = 0;
    snprintf(dst, cap, "%s '%s%s'", kind, tmp, len > show ? "..." : "");
}

static uint64_t remaining(const parser *ps) { return ps->size - ps->pos; }

static int past_end(parser *ps, const char *field) {
    return td_err_set(ps->err, TD_E_FORMAT,
                      "%s: %s at offset %llu runs past end of file (%llu bytes)", ps->what,
                      field, (unsigned long long)ps->pos, (unsigned long long)ps->size);
}

static bool take(parser *ps, uint64_t n, const uint8_t **out) {
    if (n > remaining(ps)) return false;
    *out = ps->p + ps->pos;
    ps->pos += n;
    return true;
}

static int rd_u32(parser *ps, const char *field, uint32_t *v) {
    const uint8_t *b;
    *v = 0; /* defined even on failure (the caller only sees rc != 0) */
    if (!take(ps, 4, &b)) return past_end(ps, field);
    *v = le32(b);
    return TD_OK;
}

static int rd_u64(parser *ps, const char *field, uint64_t *v) {
    const uint8_t *b;
    *v = 0; /* defined even on failure (the caller only sees rc != 0) */
    if (!take(ps, 8, &b)) return past_end(ps, field);
    *v = le64(b);
    return TD_OK;
}

/* A key or tensor name: 1..MAX_NAME_LEN bytes, no NUL (we hand out C strings),
 * copied NUL-terminated into the arena. */
static int rd_name(parser *ps, const char *field, char **out, size_t *out_len) {
    uint64_t len;
    int rc = rd_u64(ps, field, &len);
    if (rc) return rc;
    if (len == 0)
        return td_err_set(ps->err, TD_E_FORMAT, "%s: %s is empty", ps->what, field);
    if (len > MAX_NAME_LEN)
        return td_err_set(ps->err, TD_E_FORMAT, "%s: %s length %llu exceeds %d bytes", ps->what,
                          field, (unsigned long long)len, MAX_NAME_LEN);
    const uint8_t *b;
    if (!take(ps, len, &b))
        return td_err_set(ps->err, TD_E_FORMAT,
                          "%s: %s length %llu at offset %llu runs past end of file (%llu bytes)",
                          ps->what, field, (unsigned long long)len, (unsigned long long)ps->pos,
                          (unsigned long long)ps->size);
    if (memchr(b, 0, (size_t)len))
        return td_err_set(ps->err, TD_E_FORMAT, "%s: %s contains a NUL byte", ps->what, field);
    char *s = arena_alloc(&ps->g->arena, (size_t)len + 1);
    if (!s) return td_err_set(ps->err, TD_E_NOMEM, "%s: out of memory", ps->what);
    memcpy(s, b, (size_t)len);
    s[len] = 0;
    *out = s;
    *out_len = (size_t)len;
    return TD_OK;
}

static int parse_value(parser *ps, td_gguf_vtype t, td_gguf_kv *kv, int depth);

/* Array body (after the value type): element type, count, elements. With kv
 * the array is recorded; nested arrays (kv == NULL) are only validated. */
static int parse_array(parser *ps, td_gguf_kv *kv, int depth) {
    if (depth >= MAX_ARRAY_DEPTH)
        return td_err_set(ps->err, TD_E_FORMAT, "%s: arrays nested deeper than %d levels",
                          ps->what, MAX_ARRAY_DEPTH);
    uint32_t et;
    uint64_t n;
    int rc = rd_u32(ps, "array element type", &et);
    if (rc) return rc;
    if (et >= TD_GGUF_VTYPE_COUNT)
        return td_err_set(ps->err, TD_E_FORMAT, "%s: unknown array element type %u", ps->what, et);
    if ((rc = rd_u64(ps, "array length", &n))) return rc;
    td_gguf_vtype etype = (td_gguf_vtype)et;

    /* Cheap bound first: every element takes at least this many bytes. */
    uint64_t min_bytes = vtype_size[etype] ? vtype_size[etype]
                       : etype == TD_GGUF_STRING ? MIN_STRING_BYTES : MIN_ARRAY_BYTES;
    uint64_t need;
    if (!td_mul_u64(n, min_bytes, &need) || need > remaining(ps))
        return td_err_set(ps->err, TD_E_FORMAT,
                          "%s: array of %llu %s elements at offset %llu runs past end of file "
                          "(%llu bytes)", ps->what, (unsigned long long)n,
                          vtype_names[etype], (unsigned long long)ps->pos,
                          (unsigned long long)ps->size);
    const uint8_t *start = ps->p + ps->pos;
    if (kv) {
        kv->arr_type = etype;
        kv->arr_len = n;
    }
    if (vtype_size[etype]) {
        if (etype == TD_GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (start[i] > 1)
                    return td_err_set(ps->err, TD_E_FORMAT,
                                      "%s: element %llu: bool value %u (must be 0 or 1)", ps->what,
                                      (unsigned long long)i, start[i]);
        ps->pos += need;
        if (kv) kv->arr_data = start;
        return TD_OK;
    }
    if (etype == TD_GGUF_STRING) {
        str_ref *idx = NULL;
        if (kv && n) {
            /* n <= size / 8, so this is at most twice the file size */
            idx = arena_alloc(&ps->g->arena, (size_t)n * sizeof *idx);
            if (!idx) return td_err_set(ps->err, TD_E_NOMEM, "%s: out of memory", ps->what);
            kv->arr_strs = idx;
        }
        for (uint64_t i = 0; i < n; i++) {
            uint64_t len;
            const uint8_t *b;
            if ((rc = rd_u64(ps, "string length", &len))) return rc;
            if (!take(ps, len, &b))
                return td_err_set(ps->err, TD_E_FORMAT,
                                  "%s: element %llu: string length %llu at offset %llu runs past "
                                  "end of file (%llu bytes)", ps->what, (unsigned long long)i,
                                  (unsigned long long)len, (unsigned long long)ps->pos,
                                  (unsigned long long)ps->size);
            if (idx) idx[i] = (str_ref){(const char *)b, len};
        }
        return TD_OK;
    }
    for (uint64_t i = 0; i < n; i++)
        if ((rc = parse_value(ps, TD_GGUF_ARRAY, NULL, depth + 1))) return rc;
    return TD_OK;
}

/* One value of type t at the cursor; recorded in kv unless kv is NULL. */
static int parse_value(parser *ps, td_gguf_vtype t, td_gguf_kv *kv, int depth) {
    if (t == TD_GGUF_ARRAY) return parse_array(ps, kv, depth);
    if (t == TD_GGUF_STRING) {
        uint64_t len;
        const uint8_t *b;
        int rc = rd_u64(ps, "string length", &len);
        if (rc) return rc;
        if (!take(ps, len, &b))
            return td_err_set(ps->err, TD_E_FORMAT,
                              "%s: string length %llu at offset %llu runs past end of file "
                              "(%llu bytes)", ps->what, (unsigned long long)len,
                              (unsigned long long)ps->pos, (unsigned long long)ps->size);
        if (kv) {
            kv->str = (const char *)b;
            kv->str_len = len;
        }
        return TD_OK;
    }
    const uint8_t *b;
    if (!take(ps, vtype_size[t], &b)) return past_end(ps, "value");
    if (t == TD_GGUF_BOOL && b[0] > 1)
        return td_err_set(ps->err, TD_E_FORMAT, "%s: bool value %u (must be 0 or 1)", ps->what,
                          b[0]);
    if (kv) kv->v = decode_scalar(t, b);
    return TD_OK;
}

static int parse_header(parser *ps, uint64_t *n_tensors, uint64_t *n_kv) {
    td_gguf *g = ps->g;
    snprintf(ps->what, sizeof ps->what, "header");
    if (ps->size < 4 || le32(ps->p) != GGUF_MAGIC) {
        if (ps->size < 4)
            return td_err_set(ps->err, TD_E_FORMAT, "not a GGUF file: only %llu bytes",
                              (unsigned long long)ps->size);
        return td_err_set(ps->err, TD_E_FORMAT,
                          "not a GGUF file: magic is %02x %02x %02x %02x, expected 'GGUF'",
                          ps->p[0], ps->p[1], ps->p[2], ps->p[3]);
    }
    ps->pos = 4;
    int rc = rd_u32(ps, "version", &g->version);
    if (rc) return rc;
    uint32_t v = g->version;
    if (v == 1)
        return td_err_set(ps->err, TD_E_UNSUPPORTED,
                          "GGUF version 1 is not supported (only versions 2 and 3)");
    if (v != 0 && (v & 0xFFFF) == 0)
        return td_err_set(ps->err, TD_E_UNSUPPORTED,
                          "GGUF version field 0x%08x: big-endian files are not supported", v);
    if (v != 2 && v != 3)
        return td_err_set(ps->err, TD_E_UNSUPPORTED,
                          "GGUF version %u is not supported (only versions 2 and 3)", v);
    if ((rc = rd_u64(ps, "tensor count", n_tensors))) return rc;
    if ((rc = rd_u64(ps, "kv count", n_kv))) return rc;
    if (*n_kv > remaining(ps) / MIN_KV_BYTES)
        return td_err_set(ps->err, TD_E_FORMAT,
                          "header: kv count %llu cannot fit in a %llu-byte file",
                          (unsigned long long)*n_kv, (unsigned long long)ps->size);
    if (*n_tensors > remaining(ps) / MIN_TINFO_BYTES)
        return td_err_set(ps->err, TD_E_FORMAT,
                          "header: tensor count %llu cannot fit in a %llu-byte file",
                          (unsigned long long)*n_tensors, (unsigned long long)ps->size);
    if (*n_kv > MAX_ENTRIES || *n_tensors > MAX_ENTRIES)
        return td_err_set(ps->err, TD_E_UNSUPPORTED,
                          "header: kv count %llu / tensor count %llu exceeds the limit %u",
                          (unsigned long long)*n_kv, (unsigned long long)*n_tensors,
                          MAX_ENTRIES);
    return TD_OK;
}

static int parse_kvs(parser *ps) {
    td_gguf *g = ps->g;
    int rc = table_init(&g->kv_names, g->n_kv);
    if (rc) return td_err_set(ps->err, rc, "out of memory for %zu kvs", g->n_kv);
    for (size_t i = 0; i < g->n_kv; i++) {
        td_gguf_kv *kv = &g->kvs[i];
        char *key;
        size_t klen;
        uint32_t t;
        snprintf(ps->what, sizeof ps->what, "kv #%zu", i);
        if ((rc = rd_name(ps, "key", &key, &klen))) return rc;
        kv->key = key;
        describe(ps->what, sizeof ps->what, "kv", (const uint8_t *)key, klen);
        if (!table_insert(&g->kv_names, key, klen, i))
            return td_err_set(ps->err, TD_E_FORMAT, "%s: duplicate key", ps->what);
        if ((rc = rd_u32(ps, "value type", &t))) return rc;
        if (t >= TD_GGUF_VTYPE_COUNT)
            return td_err_set(ps->err, TD_E_FORMAT, "%s: unknown value type %u", ps->what, t);
        kv->type = (td_gguf_vtype)t;
        kv->arr_type = TD_GGUF_VTYPE_COUNT;
        if ((rc = parse_value(ps, kv->type, kv, 0))) return rc;
    }
    return TD_OK;
}

static int parse_alignment(parser *ps) {
    td_gguf *g = ps->g;
    g->alignment = DEFAULT_ALIGNMENT;
    size_t i = table_lookup(&g->kv_names, "general.alignment");
    if (i == SIZE_MAX) return TD_OK;
    const td_gguf_kv *kv = &g->kvs[i];
    uint64_t a;
    if (!is_unsigned(kv->type) && !is_signed(kv->type))
        return td_err_set(ps->err, TD_E_FORMAT, "kv 'general.alignment': must be an integer, not %s",
                          vtype_names[kv->type]);
    if (!scalar_u64(kv->type, kv->v, &a))
        return td_err_set(ps->err, TD_E_FORMAT,
                          "kv 'general.alignment': %lld is not a power of two >= 8",
                          (long long)kv->v.i);
    if (a < 8 || (a & (a - 1)) != 0)
        return td_err_set(ps->err, TD_E_FORMAT,
                          "kv 'general.alignment': %llu is not a power of two >= 8",
                          (unsigned long long)a);
    g->alignment = a;
    return TD_OK;
}

/* One tensor-info entry: name, shape, type and offset, with the shape and
 * size checked now; the extent is checked once the data section is known. */
static int parse_tensor_info(parser *ps, size_t i) {
    td_gguf *g = ps->g;
    td_gguf_tensor *t = &g->tensors[i];
    char *name;
    size_t nlen;
    int rc;
    snprintf(ps->what, sizeof ps->what, "tensor #%zu", i);
    if ((rc = rd_name(ps, "name", &name, &nlen))) return rc;
    t->name = name;
    describe(ps->what, sizeof ps->what, "tensor", (const uint8_t *)name, nlen);
    if (!table_insert(&g->tensor_names, name, nlen, i))
        return td_err_set(ps->err, TD_E_FORMAT, "%s: duplicate tensor name", ps->what);
    if ((rc = rd_u32(ps, "n_dims", &t->n_dims))) return rc;
    if (t->n_dims < 1 || t->n_dims > 4)
        return td_err_set(ps->err, TD_E_FORMAT, "%s: n_dims is %u (must be 1..4)", ps->what,
                          t->n_dims);
    uint64_t nelem = 1;
    bool overflow = false;
    for (uint32_t d = 0; d < 4; d++) {
        t->ne[d] = 1;
        if (d < t->n_dims && (rc = rd_u64(ps, "dimension", &t->ne[d]))) return rc;
        if (t->ne[d] == 0)
            return td_err_set(ps->err, TD_E_FORMAT, "%s: dimension %u is 0", ps->what, d);
        if (!td_mul_u64(nelem, t->ne[d], &nelem) || nelem > INT64_MAX) overflow = true;
    }
    if (overflow)
        return td_err_set(ps->err, TD_E_FORMAT,
                          "%s: element count of shape [%llu, %llu, %llu, %llu] overflows",
                          ps->what, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                          (unsigned long long)t->ne[2], (unsigned long long)t->ne[3]);
    if ((rc = rd_u32(ps, "type", &t->type))) return rc;
    const td_type_traits *tr = td_quant_traits(t->type);
    if (!tr || !(tr->weight_ok || t->type == TD_TYPE_F32))
        return td_err_set(ps->err, TD_E_UNSUPPORTED, "%s: tensor type %u (%s) is not supported",
                          ps->what, t->type, tr && tr->name ? tr->name : "unknown");
    if (tr->block_elems == 0 || t->ne[0] % tr->block_elems != 0)
        return td_err_set(ps->err, TD_E_FORMAT,
                          "%s: row length %llu is not a multiple of the %s block size %u",
                          ps->what, (unsigned long long)t->ne[0], tr->name, tr->block_elems);
    uint64_t nb;
    if (!td_mul_u64(t->ne[0] / tr->block_elems, tr->block_bytes, &nb) ||
        !td_mul_u64(nb, t->ne[1], &nb) || !td_mul_u64(nb, t->ne[2], &nb) ||
        !td_mul_u64(nb, t->ne[3], &nb))
        return td_err_set(ps->err, TD_E_FORMAT, "%s: byte size overflows", ps->what);
    t->nbytes = nb;
    if ((rc = rd_u64(ps, "data offset", &t->offset))) return rc;
    if (t->offset % g->alignment != 0)
        return td_err_set(ps->err, TD_E_FORMAT,
                          "%s: data offset %llu is not a multiple of the alignment %llu",
                          ps->what, (unsigned long long)t->offset,
                          (unsigned long long)g->alignment);
    return TD_OK;
}

static int parse_tensors(parser *ps) {
    td_gguf *g = ps->g;
    int rc = table_init(&g->tensor_names, g->n_tensors);
    if (rc) return td_err_set(ps->err, rc, "out of memory for %zu tensors", g->n_tensors);
    for (size_t i = 0; i < g->n_tensors; i++)
        if ((rc = parse_tensor_info(ps, i))) return rc;

    uint64_t start;
    if (!td_add_u64(ps->pos, g->alignment - 1, &start))
        return td_err_set(ps->err, TD_E_FORMAT, "data section offset overflows");
    g->data_offset = start & ~(g->alignment - 1);
    uint64_t avail = g->data_offset <= ps->size ? ps->size - g->data_offset : 0;
    for (size_t i = 0; i < g->n_tensors; i++) {
        td_gguf_tensor *t = &g->tensors[i];
        uint64_t end;
        if (!td_add_u64(t->offset, t->nbytes, &end) || end > avail) {
            describe(ps->what, sizeof ps->what, "tensor", (const uint8_t *)t->name,
                     strlen(t->name));
            return td_err_set(ps->err, TD_E_FORMAT,
                              "%s: data [offset %llu, %llu bytes] extends past end of file "
                              "(%llu bytes, data section at %llu)", ps->what,
                              (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                              (unsigned long long)ps->size,
                              (unsigned long long)g->data_offset);
        }
        t->data = ps->p + g->data_offset + t->offset;
    }
    return TD_OK;
}

static int gguf_parse(const uint8_t *data, size_t size, td_gguf **out, td_err *err) {
    int rc;
    uint64_t n_tensors = 0, n_kv = 0;
    td_gguf *g = calloc(1, sizeof *g);
    if (!g) return td_err_set(err, TD_E_NOMEM, "out of memory");
    g->data = data;
    g->size = size;
    parser ps = {.p = data, .size = size, .pos = 0, .err = err, .g = g};

    if ((rc = parse_header(&ps, &n_tensors, &n_kv))) goto fail;
    /* both counts are bounded by size / MIN_*_BYTES above, so they fit size_t */
    g->n_kv = (size_t)n_kv;
    g->n_tensors = (size_t)n_tensors;
    if ((g->n_kv && !(g->kvs = calloc(g->n_kv, sizeof *g->kvs))) ||
        (g->n_tensors && !(g->tensors = calloc(g->n_tensors, sizeof *g->tensors)))) {
        rc = td_err_set(err, TD_E_NOMEM, "out of memory for %zu kvs and %zu tensors", g->n_kv,
                        g->n_tensors);
        goto fail;
    }
    if ((rc = parse_kvs(&ps))) goto fail;
    if ((rc = parse_alignment(&ps))) goto fail;
    if ((rc = parse_tensors(&ps))) goto fail;
    *out = g;
    return TD_OK;
fail:
    td_gguf_close(g);
    return rc;
}

int td_gguf_open_memory(const void *data, size_t size, td_gguf **out, td_err *err) {
    if (!out) return td_err_set(err, TD_E_ARG, "td_gguf_open_memory: out is NULL");
    *out = NULL;
    if (!data && size)
        return td_err_set(err, TD_E_ARG, "td_gguf_open_memory: data is NULL");
    static const uint8_t empty[1];
    return gguf_parse(data ? data : empty, size, out, err);
}

int td_gguf_open(const char *path, td_gguf **out, td_err *err) {
    if (!out) return td_err_set(err, TD_E_ARG, "td_gguf_open: out is NULL");
    *out = NULL;
    if (!path) return td_err_set(err, TD_E_ARG, "td_gguf_open: path is NULL");
    int rc;
    void *map = MAP_FAILED;
    size_t size = 0;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = td_err_set(err, TD_E_IO, "cannot open '%s': %s", path, strerror(errno));
        goto fail;
    }
    if (fstat(fd, &st) != 0) {
        rc = td_err_set(err, TD_E_IO, "cannot stat '%s': %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = td_err_set(err, TD_E_IO, "'%s' is not a regular file", path);
        goto fail;
    }
    size = (size_t)st.st_size;
    if (size < 4) { /* mmap cannot map an empty file */
        rc = td_err_set(err, TD_E_FORMAT, "'%s' is not a GGUF file: only %zu bytes", path, size);
        goto fail;
    }
    map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        rc = td_err_set(err, TD_E_IO, "cannot map '%s': %s", path, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;
    if ((rc = gguf_parse(map, size, out, err))) goto fail;
    (*out)->mapped = true;
    return TD_OK;
fail:
    if (map != MAP_FAILED) munmap(map, size);
    if (fd >= 0) close(fd);
    return rc;
}

void td_gguf_close(td_gguf *g) {
    if (!g) return;
    if (g->mapped) munmap((void *)g->data, g->size);
    arena_free(g->arena);
    free(g->kv_names.slot);
    free(g->tensor_names.slot);
    free(g->kvs);
    free(g->tensors);
    free(g);
}

/* ---- file ---- */

uint32_t td_gguf_version(const td_gguf *g) { return g->version; }
size_t td_gguf_file_size(const td_gguf *g) { return g->size; }
const void *td_gguf_file_data(const td_gguf *g) { return g->data; }
uint64_t td_gguf_alignment(const td_gguf *g) { return g->alignment; }
uint64_t td_gguf_data_offset(const td_gguf *g) { return g->data_offset; }

void td_gguf_release_data(const td_gguf *g) {
    /* Only our own read-only file mapping: there MADV_DONTNEED just unmaps
     * clean pages (the page cache keeps them); on a borrowed buffer, which
     * may be anonymous memory, it would zero the caller's bytes. */
    if (!g || !g->mapped) return;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) return;
    uintptr_t lo = (uintptr_t)g->data + g->data_offset, hi = (uintptr_t)g->data + g->size;
    lo = (lo + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    hi &= ~((uintptr_t)page - 1);
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* ---- metadata ---- */

size_t td_gguf_kv_count(const td_gguf *g) { return g->n_kv; }

const td_gguf_kv *td_gguf_kv_at(const td_gguf *g, size_t i) {
    return i < g->n_kv ? &g->kvs[i] : NULL;
}

const td_gguf_kv *td_gguf_find(const td_gguf *g, const char *key) {
    size_t i = table_lookup(&g->kv_names, key);
    return i == SIZE_MAX ? NULL : &g->kvs[i];
}

const char *td_gguf_kv_key(const td_gguf_kv *kv) { return kv ? kv->key : NULL; }
td_gguf_vtype td_gguf_kv_type(const td_gguf_kv *kv) { return kv ? kv->type : TD_GGUF_VTYPE_COUNT; }

bool td_gguf_kv_u64(const td_gguf_kv *kv, uint64_t *out) {
    return kv && scalar_u64(kv->type, kv->v, out);
}
bool td_gguf_kv_i64(const td_gguf_kv *kv, int64_t *out) {
    return kv && scalar_i64(kv->type, kv->v, false, out);
}
bool td_gguf_kv_f64(const td_gguf_kv *kv, double *out) {
    return kv && scalar_f64(kv->type, kv->v, out);
}
bool td_gguf_kv_str(const td_gguf_kv *kv, const char **s, size_t *len) {
    if (!kv || kv->type != TD_GGUF_STRING) return false;
    *s = kv->str;
    *len = (size_t)kv->str_len;
    return true;
}

bool td_gguf_get_u64(const td_gguf *g, const char *key, uint64_t *out) {
    return td_gguf_kv_u64(td_gguf_find(g, key), out);
}
bool td_gguf_get_f32(const td_gguf *g, const char *key, float *out) {
    double d;
    if (!td_gguf_kv_f64(td_gguf_find(g, key), &d)) return false;
    *out = (float)d;
    return true;
}
bool td_gguf_get_bool(const td_gguf *g, const char *key, bool *out) {
    const td_gguf_kv *kv = td_gguf_find(g, key);
    if (!kv || kv->type != TD_GGUF_BOOL) return false;
    *out = kv->v.u != 0;
    return true;
}
bool td_gguf_get_str(const td_gguf *g, const char *key, const char **s, size_t *len) {
    return td_gguf_kv_str(td_gguf_find(g, key), s, len);
}

td_gguf_vtype td_gguf_arr_type(const td_gguf_kv *kv) {
    return kv && kv->type == TD_GGUF_ARRAY ? kv->arr_type : TD_GGUF_VTYPE_COUNT;
}
uint64_t td_gguf_arr_len(const td_gguf_kv *kv) {
    return kv && kv->type == TD_GGUF_ARRAY ? kv->arr_len : 0;
}

bool td_gguf_arr_str(const td_gguf_kv *kv, uint64_t i, const char **s, size_t *len) {
    if (td_gguf_arr_type(kv) != TD_GGUF_STRING || i >= kv->arr_len) return false;
    *s = kv->arr_strs[i].p;
    *len = (size_t)kv->arr_strs[i].len;
    return true;
}

/* Element i of a fixed-size-element array, or false. */
static bool arr_elem(const td_gguf_kv *kv, uint64_t i, scalar *s) {
    td_gguf_vtype t = td_gguf_arr_type(kv);
    if (t >= TD_GGUF_VTYPE_COUNT || !vtype_size[t] || i >= kv->arr_len) return false;
    *s = decode_scalar(t, kv->arr_data + i * vtype_size[t]);
    return true;
}

bool td_gguf_arr_i64(const td_gguf_kv *kv, uint64_t i, int64_t *out) {
    scalar s;
    return arr_elem(kv, i, &s) && scalar_i64(kv->arr_type, s, true, out);
}
bool td_gguf_arr_f64(const td_gguf_kv *kv, uint64_t i, double *out) {
    scalar s;
    return arr_elem(kv, i, &s) && scalar_f64(kv->arr_type, s, out);
}

/* ---- tensors ---- */

size_t td_gguf_tensor_count(const td_gguf *g) { return g->n_tensors; }

const td_gguf_tensor *td_gguf_tensor_at(const td_gguf *g, size_t i) {
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const td_gguf_tensor *td_gguf_find_tensor(const td_gguf *g, const char *name) {
    size_t i = table_lookup(&g->tensor_names, name);
    return i == SIZE_MAX ? NULL : &g->tensors[i];
}
