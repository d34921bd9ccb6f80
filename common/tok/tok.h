/* tok.h — tokenizer built from a GGUF file's tokenizer.* metadata.
 *
 * Byte-level BPE ("gpt2", with the pre-tokenizer regexes the file names via
 * tokenizer.ggml.pre) and SentencePiece BPE ("llama"). Special/control tokens
 * are matched verbatim in the input when parse_special is set. Encoding
 * rejects invalid UTF-8 with TD_E_ARG. Chat formatting renders the template
 * family detected from tokenizer.chat_template (ChatML, Llama-3, Mistral).
 *
 * Threads: a td_tok is read-only once created; every function here takes it
 * const and keeps its scratch (PCRE2 match data included) per call, so one
 * tokenizer serves any number of threads at once.
 */
#ifndef TD_TOK_H
#define TD_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf/gguf.h"
#include "util/util.h"

typedef struct td_tok td_tok;

typedef enum td_chat_kind {
    TD_CHAT_NONE = 0, /* no template: messages are concatenated */
    TD_CHAT_CHATML,
    TD_CHAT_LLAMA3,
    TD_CHAT_MISTRAL,
} td_chat_kind;

typedef struct td_chat_msg {
    const char *role;    /* "system", "user", "assistant" */
    const char *content; /* UTF-8 */
} td_chat_msg;

int td_tok_create(const td_gguf *g, td_tok **out, td_err *err);
void td_tok_destroy(td_tok *t); /* accepts NULL */

int32_t td_tok_vocab_size(const td_tok *t);
int32_t td_tok_bos(const td_tok *t);      /* -1 if none */
int32_t td_tok_eos(const td_tok *t);      /* -1 if none */
bool td_tok_add_bos(const td_tok *t);     /* whether encode prepends BOS by default */
bool td_tok_is_eog(const td_tok *t, int32_t id); /* end of generation (EOS, EOT, im_end...) */
/* FNV-1a over the token table (texts and types): equal vocabularies hash equal. */
uint64_t td_tok_vocab_hash(const td_tok *t);

/* Encodes len bytes of UTF-8. *ids is malloc'd (caller frees), *n its length.
 * add_bos: prepend BOS (callers usually pass td_tok_add_bos(t)).
 * parse_special: recognise special/control token texts in the input. */
int td_tok_encode(const td_tok *t, const char *text, size_t len, bool add_bos,
                  bool parse_special, int32_t **ids, size_t *n, td_err *err);

/* Bytes of one token as it appears in output text (byte-level decoding,
 * SPM "▁" -> space, <0xXX> -> byte). Returns the byte count, which may exceed
 * cap (then nothing beyond cap is written), or a negative code for a bad id.
 * Control tokens decode to their text only when render_special is set. */
int td_tok_piece(const td_tok *t, int32_t id, bool render_special, char *buf, size_t cap);

/* Text of the token table entry (for tandem tokenize / debugging). */
const char *td_tok_text(const td_tok *t, int32_t id, size_t *len);

td_chat_kind td_tok_chat_kind(const td_tok *t);
/* Renders messages with the file's template family; *out is malloc'd and
 * NUL-terminated. add_generation_prompt appends the assistant header. */
int td_tok_chat_format(const td_tok *t, const td_chat_msg *msgs, size_t n_msgs,
                       bool add_generation_prompt, char **out, td_err *err);

/* ---- additions ---- */

/* Id of the token whose table text is exactly text[0, len), or -1. */
int32_t td_tok_find(const td_tok *t, const char *text, size_t len);

/* Decodes ids to text: the td_tok_piece bytes concatenated, except that with
 * SentencePiece and add_space_prefix the space the encoder prefixed to the
 * first text token is dropped. *out is malloc'd and NUL-terminated, *out_len
 * (may be NULL) its length. A bad id gives TD_E_ARG. */
int td_tok_decode(const td_tok *t, const int32_t *ids, size_t n, bool render_special, char **out,
                  size_t *out_len, td_err *err);

/* Notes on the functions above:
 * - td_tok_encode: user-defined tokens (token_type 4) are matched verbatim
 *   whether or not parse_special is set (they are ordinary vocabulary, as in
 *   llama.cpp and HF tokenizers); control and unknown tokens only with it.
 *   Zero tokens still come back as an allocation (n = 0).
 * - td_tok_chat_format: the rendered text contains the special-token texts of
 *   its format (and "<|begin_of_text|>" / the BOS text first for Llama-3 and
 *   Mistral, whose templates start with bos_token), so encode it with
 *   parse_special = true and add_bos = false. */

/* The tokenizer's metadata of g (tokenizer.* keys, general.architecture,
 * general.name) as a GGUF file in memory (malloc'ed, *out freed by the
 * caller): what a process without the model file needs to build the same
 * tokenizer (tok_export.c). */
int td_tok_export_gguf(const td_gguf *g, void **out, size_t *size, td_err *err);

/* The tokenizer as Hugging Face files, for clients that tokenize on their
 * own (a gateway): tokenizer.json, which PyPI `tokenizers` loads and which
 * encodes like td_tok_encode with parse_special set, and
 * tokenizer_config.json (chat template, special tokens, max_len as
 * model_max_length). g is the file t was created from. Both strings are
 * malloc'd, NUL-terminated, freed by the caller. Byte-level BPE only:
 * SentencePiece vocabularies give TD_E_UNSUPPORTED (tok_export_hf.c). */
int td_tok_export_hf(const td_tok *t, const td_gguf *g, int32_t max_len, char **tokenizer_json, char **config_json,
                     td_err *err);

#endif
