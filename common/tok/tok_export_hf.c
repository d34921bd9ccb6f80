/* tok_export_hf.c — the tokenizer as Hugging Face files: tokenizer.json (the
 * `tokenizers` library's format) and tokenizer_config.json (chat template,
 * special tokens), built from a GGUF file's metadata so that a process that
 * only has those files (a gateway in front of tandem) tokenizes exactly as
 * td_tok_encode does with parse_special set.
 *
 * How the pieces line up with tandem's encoder: each pre-tokenizer pass
 * becomes a Split with the same regex and behaviour "Isolated" (matches and
 * the text between them become pieces, as tok_pretok.c splits), followed by
 * ByteLevel without its own regex (bytes to the GPT-2 alphabet only); the
 * model is BPE over the file's vocabulary and merges; control, unknown and
 * user-defined tokens are added tokens, matched verbatim before anything
 * else. Only byte-level BPE vocabularies export; SentencePiece ones are
 * refused with TD_E_UNSUPPORTED.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok_internal.h"

/* cJSON wants NUL-terminated strings; token texts carry a length. */
static cJSON *str_n(const char *s, size_t len) {
    char *tmp = malloc(len + 1);
    if (!tmp) return NULL;
    memcpy(tmp, s, len);
    tmp[len] = 0;
    cJSON *j = cJSON_CreateString(tmp);
    free(tmp);
    return j;
}

static bool add(cJSON *obj, const char *key, cJSON *item) {
    if (!item) return false;
    if (!cJSON_AddItemToObject(obj, key, item)) {
        cJSON_Delete(item);
        return false;
    }
    return true;
}

static bool add_str(cJSON *obj, const char *key, const char *s) { return add(obj, key, cJSON_CreateString(s)); }
static bool add_bool(cJSON *obj, const char *key, bool b) { return add(obj, key, cJSON_CreateBool(b)); }
static bool add_null(cJSON *obj, const char *key) { return add(obj, key, cJSON_CreateNull()); }

static bool add_token_text(cJSON *obj, const char *key, const td_tok *t, int32_t id) {
    size_t len = 0;
    const char *s = td_tok_text(t, id, &len);
    return s ? add(obj, key, str_n(s, len)) : add_null(obj, key);
}

static cJSON *added_tokens(const td_tok *t) {
    cJSON *arr = cJSON_CreateArray();
    if (!arr) return NULL;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint8_t ty = t->type[id];
        if (ty != TD_TOKT_CONTROL && ty != TD_TOKT_UNKNOWN && ty != TD_TOKT_USER) continue;
        cJSON *o = cJSON_CreateObject();
        bool ok = o && cJSON_AddItemToArray(arr, o);
        if (!ok) {
            cJSON_Delete(o);
            goto fail;
        }
        ok = add(o, "id", cJSON_CreateNumber(id)) && add_token_text(o, "content", t, id) &&
             add_bool(o, "single_word", false) && add_bool(o, "lstrip", false) && add_bool(o, "rstrip", false) &&
             add_bool(o, "normalized", false) && add_bool(o, "special", ty != TD_TOKT_USER);
        if (!ok) goto fail;
    }
    return arr;
fail:
    cJSON_Delete(arr);
    return NULL;
}

/* Appends a fresh object to arr; NULL when out of memory. */
static cJSON *push_object(cJSON *arr) {
    cJSON *o = cJSON_CreateObject();
    if (o && !cJSON_AddItemToArray(arr, o)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *pre_tokenizer(const td_tok *t) {
    cJSON *seq = cJSON_CreateObject();
    cJSON *list = cJSON_CreateArray();
    if (!seq || !add(seq, "pretokenizers", list) || !add_str(seq, "type", "Sequence")) goto fail;
    for (int i = 0; i < t->pre.n_re; i++) {
        cJSON *split = push_object(list);
        cJSON *pat = cJSON_CreateObject();
        if (!split || !add(split, "pattern", pat) || !add_str(pat, "Regex", t->pre.pattern[i]) ||
            !add_str(split, "type", "Split") || !add_str(split, "behavior", "Isolated") ||
            !add_bool(split, "invert", false))
            goto fail;
    }
    cJSON *bl = push_object(list);
    if (!bl || !add_str(bl, "type", "ByteLevel") || !add_bool(bl, "add_prefix_space", false) ||
        !add_bool(bl, "trim_offsets", true) || !add_bool(bl, "use_regex", false))
        goto fail;
    return seq;
fail:
    if (!seq) cJSON_Delete(list);
    cJSON_Delete(seq);
    return NULL;
}

/* TemplateProcessing that puts BOS in front ("single": BOS $A; "pair":
 * BOS $A BOS $B), only for vocabularies whose encoder adds BOS by default. */
static cJSON *post_processor(const td_tok *t) {
    if (!t->add_bos || t->bos < 0) return cJSON_CreateNull();
    cJSON *name = NULL;
    if (!add_token_text(name = cJSON_CreateObject(), "n", t, t->bos)) {
        cJSON_Delete(name);
        return NULL;
    }
    char *quoted = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(name, "n")); /* "<s>", escaped */
    cJSON_Delete(name);
    if (!quoted) return NULL;
    const char *fmt =
        "{\"type\":\"TemplateProcessing\","
        "\"single\":[{\"SpecialToken\":{\"id\":%s,\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],"
        "\"pair\":[{\"SpecialToken\":{\"id\":%s,\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},"
        "{\"SpecialToken\":{\"id\":%s,\"type_id\":1}},{\"Sequence\":{\"id\":\"B\",\"type_id\":1}}],"
        "\"special_tokens\":{%s:{\"id\":%s,\"ids\":[%d],\"tokens\":[%s]}}}";
    size_t cap = strlen(fmt) + 6 * strlen(quoted) + 16;
    char *text = malloc(cap);
    cJSON *pp = NULL;
    if (text) {
        snprintf(text, cap, fmt, quoted, quoted, quoted, quoted, quoted, (int)t->bos, quoted);
        pp = cJSON_Parse(text);
    }
    free(text);
    free(quoted);
    return pp;
}

static cJSON *bpe_model(const td_tok *t, const td_gguf *g, td_err *err) {
    cJSON *m = cJSON_CreateObject(), *vocab = cJSON_CreateObject(), *merges = cJSON_CreateArray();
    if (!m || !vocab || !merges) goto nomem;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t len = 0;
        const char *s = td_tok_text(t, id, &len);
        char *key = s ? malloc(len + 1) : NULL;
        if (!key) goto nomem;
        memcpy(key, s, len);
        key[len] = 0;
        bool ok = add(vocab, key, cJSON_CreateNumber(id));
        free(key);
        if (!ok) goto nomem;
    }
    const td_gguf_kv *kv = td_gguf_find(g, "tokenizer.ggml.merges");
    uint64_t n = kv ? td_gguf_arr_len(kv) : 0;
    if (!kv || td_gguf_arr_type(kv) != TD_GGUF_STRING) {
        td_err_set(err, TD_E_FORMAT, "tokenizer.ggml.merges: missing or not a string array");
        goto fail;
    }
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if (!td_gguf_arr_str(kv, i, &s, &len)) {
            td_err_set(err, TD_E_FORMAT, "tokenizer.ggml.merges[%llu]: unreadable", (unsigned long long)i);
            goto fail;
        }
        cJSON *j = str_n(s, len);
        if (!j || !cJSON_AddItemToArray(merges, j)) {
            cJSON_Delete(j);
            goto nomem;
        }
    }
    bool ok = add_str(m, "type", "BPE") && add_null(m, "dropout") && add_null(m, "unk_token") &&
              add_null(m, "continuing_subword_prefix") && add_null(m, "end_of_word_suffix") &&
              add_bool(m, "fuse_unk", false) && add_bool(m, "byte_fallback", false) &&
              add_bool(m, "ignore_merges", t->pre.ignore_merges);
    if (!ok) goto nomem;
    ok = add(m, "vocab", vocab);
    vocab = NULL;
    ok = ok && add(m, "merges", merges);
    merges = NULL;
    if (!ok) goto nomem;
    return m;
nomem:
    td_err_set(err, TD_E_NOMEM, "tokenizer.json: out of memory");
fail:
    cJSON_Delete(m);
    cJSON_Delete(vocab);
    cJSON_Delete(merges);
    return NULL;
}

static char *tokenizer_json(const td_tok *t, const td_gguf *g, td_err *err) {
    cJSON *root = cJSON_CreateObject();
    cJSON *model = NULL;
    char *out = NULL;
    if (!root) goto nomem;
    if (!add_str(root, "version", "1.0") || !add_null(root, "truncation") || !add_null(root, "padding") ||
        !add(root, "added_tokens", added_tokens(t)) || !add_null(root, "normalizer") ||
        !add(root, "pre_tokenizer", pre_tokenizer(t)) || !add(root, "post_processor", post_processor(t)))
        goto nomem;
    cJSON *dec = cJSON_CreateObject();
    if (!add(root, "decoder", dec) || !add_str(dec, "type", "ByteLevel") || !add_bool(dec, "add_prefix_space", true) ||
        !add_bool(dec, "trim_offsets", true) || !add_bool(dec, "use_regex", true))
        goto nomem;
    if (!(model = bpe_model(t, g, err))) goto fail;
    if (!add(root, "model", model)) goto nomem;
    if (!(out = cJSON_PrintUnformatted(root))) goto nomem;
    cJSON_Delete(root);
    return out;
nomem:
    td_err_set(err, TD_E_NOMEM, "tokenizer.json: out of memory");
fail:
    cJSON_Delete(root);
    return NULL;
}

static char *config_json(const td_tok *t, const td_gguf *g, int32_t max_len, td_err *err) {
    cJSON *root = cJSON_CreateObject();
    const char *tmpl;
    size_t tmpl_len;
    bool ok = root != NULL;
    if (ok && td_gguf_get_str(g, "tokenizer.chat_template", &tmpl, &tmpl_len)) ok = add(root, "chat_template", str_n(tmpl, tmpl_len));
    ok = ok && (t->bos >= 0 ? add_token_text(root, "bos_token", t, t->bos) : add_null(root, "bos_token"));
    ok = ok && (t->eos >= 0 ? add_token_text(root, "eos_token", t, t->eos) : add_null(root, "eos_token"));
    ok = ok && (t->unk >= 0 ? add_token_text(root, "unk_token", t, t->unk) : add_null(root, "unk_token"));
    uint64_t pad;
    if (ok && td_gguf_get_u64(g, "tokenizer.ggml.padding_token_id", &pad) && pad < (uint64_t)t->n_vocab)
        ok = add_token_text(root, "pad_token", t, (int32_t)pad);
    ok = ok && add_bool(root, "add_bos_token", t->add_bos) && add_bool(root, "add_eos_token", false) &&
         add(root, "model_max_length", cJSON_CreateNumber(max_len > 0 ? max_len : 2048)) &&
         add_str(root, "tokenizer_class", "PreTrainedTokenizerFast") &&
         add_bool(root, "clean_up_tokenization_spaces", false);
    char *out = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!out) td_err_set(err, TD_E_NOMEM, "tokenizer_config.json: out of memory");
    return out;
}

int td_tok_export_hf(const td_tok *t, const td_gguf *g, int32_t max_len, char **tok_json, char **cfg_json,
                     td_err *err) {
    *tok_json = *cfg_json = NULL;
    if (!t || !g) return td_err_set(err, TD_E_ARG, "td_tok_export_hf: NULL tokenizer or file");
    if (t->model != TD_TOK_BPE)
        return td_err_set(err, TD_E_UNSUPPORTED,
                          "tokenizer.json: only byte-level BPE vocabularies export (this one is SentencePiece)");
    if (!(*tok_json = tokenizer_json(t, g, err))) return err->code ? err->code : TD_E_NOMEM;
    if (!(*cfg_json = config_json(t, g, max_len, err))) {
        free(*tok_json);
        *tok_json = NULL;
        return err->code ? err->code : TD_E_NOMEM;
    }
    return TD_OK;
}
