/* tok_internal.h — private to common/tok/: the td_tok struct and the helpers
 * its files share. Not part of the module contract (tok.h is); other modules
 * must not include it. Cross-file helpers carry the td_tok_ prefix only so
 * that `nm -g` stays clean; they are not API.
 */
#ifndef TD_TOK_INTERNAL_H
#define TD_TOK_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tok/tok.h"

/* Token types as GGUF stores them (tokenizer.ggml.token_type). */
enum {
    TD_TOKT_UNDEF = 0, TD_TOKT_NORMAL = 1, TD_TOKT_UNKNOWN = 2, TD_TOKT_CONTROL = 3,
    TD_TOKT_USER = 4, TD_TOKT_UNUSED = 5, TD_TOKT_BYTE = 6,
};

/* Per-token flag bits kept beside the type. */
enum { TD_TOKF_EOG = 1 };

enum { TD_TOK_BPE = 1, TD_TOK_SPM = 2 };

/* ---- UTF-8 (tok_utf8.c) ---- */
/* Length of the valid UTF-8 prefix; == n when all of s is valid. Strict:
 * no overlongs, no surrogates, nothing above U+10FFFF. */
size_t td_tok_utf8_valid(const char *s, size_t n);
/* Decodes one char of VALID UTF-8 at s; returns its byte length. */
int td_tok_utf8_dec(const unsigned char *s, uint32_t *cp);
/* Encodes cp (<= 0x10FFFF) into out[4]; returns the byte length. */
int td_tok_utf8_enc(uint32_t cp, char *out);
/* Byte-level BPE alphabet: byte -> code point and back (-1: not a mapped cp). */
uint32_t td_tok_byte_to_cp(uint8_t b);
int td_tok_cp_to_byte(uint32_t cp);

/* ---- string interning and pair maps (tok_map.c) ----
 * td_tok_strtab interns byte strings: each distinct string gets a dense id in
 * insertion order. The tokenizer interns every token text first (so a
 * string's id is its token id when < n_vocab), then the merge halves and
 * results that are not tokens. */
typedef struct td_tok_strtab {
    char *arena;      /* all strings back to back, each NUL-terminated */
    size_t arena_len, arena_cap;
    uint32_t *off;    /* (n) byte offset of string i in arena (< 4 GiB) */
    uint32_t *len;    /* (n) byte length of string i */
    size_t n, cap;
    struct td_tok_slot {
        uint32_t hash; /* high bits of the string hash: most misses stop here */
        int32_t id;    /* -1 = empty */
        uint32_t len, off; /* copies of len[id], off[id]: one cache line per probe */
    } *slots;         /* (nslots) open addressing, linear probing */
    size_t nslots;    /* power of two, >= 2n */
} td_tok_strtab;

int td_tok_strtab_init(td_tok_strtab *st, size_t expect);
void td_tok_strtab_free(td_tok_strtab *st);
/* Id of s, or -1. */
int32_t td_tok_strtab_find(const td_tok_strtab *st, const char *s, size_t n);
/* Id of s (hv = td_tok_strtab_hash(s, n)), adding it when absent; *added
 * tells which. Negative TD_E_* on failure (out of memory, or more than
 * INT32_MAX strings / 4 GiB of text). Bulk loads hash and prefetch a few
 * entries ahead: the table is larger than the caches. */
int32_t td_tok_strtab_intern_h(td_tok_strtab *st, const char *s, size_t n, uint64_t hv,
                               bool *added);
uint64_t td_tok_strtab_hash(const char *s, size_t n);
uint64_t td_tok_strtab_hash2(const char *a, size_t na, const char *b, size_t nb); /* of a+b */
void td_tok_strtab_prefetch(const td_tok_strtab *st, uint64_t hv);
static inline const char *td_tok_strtab_str(const td_tok_strtab *st, int32_t id) {
    return st->arena + st->off[id];
}

/* (left id, right id) -> (rank, merged id); the first insertion of a pair wins. */
typedef struct td_tok_pairmap {
    struct td_tok_pair {
        uint64_t key;  /* left << 32 | right; UINT64_MAX = empty */
        int32_t rank;
        int32_t merged;
    } *slots;         /* (nslots): one 16-byte entry per probe */
    size_t n, nslots;
} td_tok_pairmap;

int td_tok_pairmap_init(td_tok_pairmap *pm, size_t expect);
void td_tok_pairmap_free(td_tok_pairmap *pm);
/* Adds the pair unless present. */
int td_tok_pairmap_put(td_tok_pairmap *pm, int32_t l, int32_t r, int32_t rank, int32_t merged);
void td_tok_pairmap_prefetch(const td_tok_pairmap *pm, int32_t l, int32_t r);
/* true and *rank, *merged when the pair is present. */
bool td_tok_pairmap_get(const td_tok_pairmap *pm, int32_t l, int32_t r, int32_t *rank,
                        int32_t *merged);

/* ---- pre-tokenizer (tok_pretok.c) ---- */
enum { TD_TOK_MAX_PASSES = 4 };

typedef struct td_tok_pretok {
    void *re[TD_TOK_MAX_PASSES]; /* pcre2_code_8 *, one per pass */
    const char *pattern[TD_TOK_MAX_PASSES]; /* each pass's regex source (static) */
    int n_re;
    bool ignore_merges; /* llama3: a piece that is a whole token skips BPE */
    bool add_bos;       /* the pre type's own add_bos default */
} td_tok_pretok;

/* A piece of the input: byte range [off, off + len). */
typedef struct td_tok_span {
    size_t off, len;
} td_tok_span;

/* Growable array of spans. */
typedef struct td_tok_spans {
    td_tok_span *v;
    size_t n, cap;
} td_tok_spans;

/* Compiles the passes for a tokenizer.ggml.pre name (NULL/"default" ok). */
int td_tok_pretok_init(td_tok_pretok *p, const char *name, size_t name_len, td_err *err);
void td_tok_pretok_free(td_tok_pretok *p);
/* Splits text[0, len) (valid UTF-8) into pieces. *out is reset first; tmp is
 * scratch. Offsets in *out are relative to text. */
int td_tok_pretok_split(const td_tok_pretok *p, const char *text, size_t len, td_tok_spans *out,
                        td_tok_spans *tmp, td_err *err);

/* ---- the tokenizer ---- */
struct td_tok {
    int model;              /* TD_TOK_BPE or TD_TOK_SPM */
    int32_t n_vocab;
    td_tok_strtab str;      /* ids < n_vocab are the tokens */
    uint8_t *type;          /* (n_vocab) TD_TOKT_* */
    uint8_t *flags;         /* (n_vocab) TD_TOKF_* */
    float *score;           /* (n_vocab) SPM merge scores; NULL for BPE */

    /* byte-level BPE */
    td_tok_pairmap merges;
    int32_t byte_sym[256];  /* byte -> string id of its one-char mapping, -1 absent */
    td_tok_pretok pre;

    /* SentencePiece */
    int32_t byte_tok[256];  /* byte -> id of <0xXX>, -1 absent */
    bool add_space_prefix;

    /* special tokens matched verbatim in the input, longest text first */
    int32_t *special;
    size_t n_special;

    int32_t bos, eos, eot, unk;
    bool add_bos;
    uint64_t vocab_hash;

    td_chat_kind chat;
    char *chat_system;      /* default system message (ChatML), or NULL */
};

/* Growable id array used by the encoders. */
typedef struct td_tok_ids {
    int32_t *v;
    size_t n, cap;
} td_tok_ids;

int td_tok_ids_push(td_tok_ids *ids, int32_t id);

/* Per-call scratch shared by the piece encoders; capacities in bytes. (A
 * td_tok is const and may be used from several threads at once, so nothing
 * mutable lives in it.) */
typedef struct td_tok_scratch {
    void *sym;   size_t sym_cap;   /* symbols of one piece */
    void *heap;  size_t heap_cap;  /* merge candidates */
    void *buf;   size_t buf_cap;   /* mapped / escaped text */
    td_tok_spans pieces, tmp;
} td_tok_scratch;

void td_tok_scratch_free(td_tok_scratch *s);

/* Encodes one pre-tokenized piece with byte-level BPE. */
int td_tok_bpe_piece(const td_tok *t, const char *s, size_t n, td_tok_scratch *sc,
                     td_tok_ids *out);
/* Encodes one raw-text fragment with SentencePiece BPE (prefix already decided). */
int td_tok_spm_fragment(const td_tok *t, const char *s, size_t n, bool space_prefix,
                        td_tok_scratch *sc, td_tok_ids *out);

/* Chat template analysis at load (tok_chat.c): sets t->chat, t->chat_system. */
int td_tok_chat_init(td_tok *t, const char *tmpl, size_t len);

#endif
