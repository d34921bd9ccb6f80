/* gen.h — plain autoregressive generation for one sequence: prompt prefill in
 * chunks, then one token per forward pass, with sampling, stop tokens, stop
 * strings and streaming of complete UTF-8 text.
 *
 * This is the reference loop speculative decoding must reproduce token for
 * token; it is also what `tandem generate --draft none` runs.
 */
#ifndef TD_GEN_H
#define TD_GEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "sample/sample.h"
#include "tok/tok.h"
#include "util/util.h"

typedef struct td_gen_params {
    td_sample_params sample;
    int32_t max_tokens;       /* generated tokens at most */
    const char *const *stop;  /* stop strings (not emitted), may be NULL */
    size_t n_stop;
    bool ignore_eos;          /* keep going past end-of-generation tokens */
} td_gen_params;

/* Receives text as soon as it is final (complete UTF-8, not a possible stop
 * string prefix). Return non-zero to stop generation. */
typedef int (*td_gen_emit_fn)(void *user, const char *text, size_t len);

typedef enum td_stop_reason {
    TD_STOP_LENGTH = 0, TD_STOP_EOG, TD_STOP_STRING, TD_STOP_CALLER, TD_STOP_CONTEXT,
} td_stop_reason;

typedef struct td_gen_stats {
    int32_t n_prompt, n_generated;
    /* prompt tokens computed during prefill_sec: all of them in td_gen_run;
     * speculation leaves the last one to its first verification pass */
    int32_t n_prefilled;
    double prefill_sec, decode_sec;
    int32_t n_forward;        /* target forward passes during decode */
    td_stop_reason stop;
} td_gen_stats;

const char *td_gen_stop_name(td_stop_reason r);

/* Streams text in order and holds back what may still turn into a stop
 * string or is an incomplete UTF-8 sequence. */
typedef struct td_textout td_textout;
/* NULL on failure: TD_E_ARG (stop strings missing or NULL), TD_E_NOMEM. */
td_textout *td_textout_create(const char *const *stop, size_t n_stop, td_gen_emit_fn emit, void *user,
                              td_err *err);
void td_textout_destroy(td_textout *o);
/* What td_textout_push and td_textout_flush return besides 0 (text taken)
 * and TD_E_NOMEM: the two ways generation ends normally, kept apart from
 * running out of memory, which is an error. */
enum { TD_TEXTOUT_STOP_STRING = 1, /* a stop string was hit; the text before it was emitted */
       TD_TEXTOUT_STOP_CALLER = 2  /* the callback returned non-zero */ };
/* Appends bytes: 0, TD_TEXTOUT_STOP_STRING, TD_TEXTOUT_STOP_CALLER, or
 * TD_E_NOMEM (nothing was taken). */
int td_textout_push(td_textout *o, const char *bytes, size_t n);
/* Appends the output bytes of token id (td_tok_piece), whatever their
 * length (an id the tokenizer does not know adds nothing); same results as
 * td_textout_push. */
int td_textout_push_token(td_textout *o, const td_tok *tok, int32_t id);
/* Emits whatever is held back (end of generation): 0 or TD_TEXTOUT_STOP_CALLER. */
int td_textout_flush(td_textout *o);

/* Generates into sequence seq (must be empty in kv). out_tokens (may be
 * NULL) receives up to max_tokens generated ids; stats is filled. */
int td_gen_run(const td_model *m, const td_tok *tok, td_ctx *ctx, td_kv *kv, int32_t seq,
               const int32_t *prompt, size_t n_prompt, const td_gen_params *p,
               td_gen_emit_fn emit, void *user, int32_t *out_tokens, td_gen_stats *stats, td_err *err);

/* Runs prompt[0..n) through the model in chunks of at most chunk rows;
 * logits of the last row land in last_logits (n_vocab) when non-NULL. */
int td_gen_prefill(td_ctx *ctx, td_kv *kv, int32_t seq, int32_t start_pos, const int32_t *ids, size_t n,
                   int32_t chunk, float *last_logits, td_err *err);

#endif
