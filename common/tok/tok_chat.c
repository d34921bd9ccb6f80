/* tok_chat.c — chat formatting. tandem does not run Jinja: the family is
 * recognised from characteristic substrings of tokenizer.chat_template and
 * rendered by hand (formats below). The only thing taken from the template
 * text itself is ChatML's default system message, when the template has one.
 * The rendered text carries special-token texts: encode it with
 * parse_special = true and add_bos = false (a BOS text is included where the
 * family's template starts with bos_token).
 */
#include <stdlib.h>
#include <string.h>

#include "tok/tok_internal.h"

/* ---- template analysis ---- */

/* Jinja string escapes as they occur in chat templates. Returns the new
 * length (in place; the result is never longer). */
static size_t unescape(char *s, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
            char c = s[++i];
            s[o++] = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
        } else {
            s[o++] = s[i];
        }
    }
    return o;
}

/* A run of template text that is part of one string literal: no quote that
 * is not escaped (it would end the literal) and no Jinja tag. */
static bool pure_literal(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\') {
            i++;
            continue;
        }
        if (s[i] == '\'' || s[i] == '"') return false;
        if ((s[i] == '{' || s[i] == '}') && i + 1 < n && (s[i + 1] == '{' || s[i + 1] == '%'))
            return false;
    }
    return true;
}

/* ChatML templates that inject a system message when the conversation has
 * none (SmolLM2, Qwen2.5) spell it as one literal:
 *   '<|im_start|>system\n<default text><|im_end|>\n'
 * The first "<|im_start|>system" + newline (real or escaped) whose text up to
 * "<|im_end|>" is a pure literal gives the default. Templates that only
 * build the system turn from message content give none. */
static int find_default_system(const char *tm, size_t len, char **out) {
    static const char head[] = "<|im_start|>system", tail[] = "<|im_end|>";
    *out = NULL;
    const char *p = tm, *end = tm + len;
    while ((p = memmem(p, (size_t)(end - p), head, sizeof head - 1)) != NULL) {
        const char *q = p + sizeof head - 1;
        p = q;
        if (q < end && *q == '\n') {
            q += 1;
        } else if (end - q >= 2 && q[0] == '\\' && q[1] == 'n') {
            q += 2;
        } else {
            continue;
        }
        const char *e = memmem(q, (size_t)(end - q), tail, sizeof tail - 1);
        if (!e) break;
        size_t n = (size_t)(e - q);
        if (n == 0 || !pure_literal(q, n)) continue;
        char *s = malloc(n + 1);
        if (!s) return TD_E_NOMEM;
        memcpy(s, q, n);
        s[unescape(s, n)] = '\0';
        *out = s;
        return TD_OK;
    }
    return TD_OK;
}

int td_tok_chat_init(td_tok *t, const char *tm, size_t len) {
    t->chat = TD_CHAT_NONE;
    if (memmem(tm, len, "<|im_start|>", 12)) {
        t->chat = TD_CHAT_CHATML;
        return find_default_system(tm, len, &t->chat_system);
    }
    if (memmem(tm, len, "<|start_header_id|>", 19)) {
        t->chat = TD_CHAT_LLAMA3;
    } else if (memmem(tm, len, "[INST]", 6)) {
        t->chat = TD_CHAT_MISTRAL;
    }
    return TD_OK;
}

/* ---- rendering ---- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->cap - b->n < n + 1) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static bool is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Content with surrounding whitespace removed (Llama-3's `| trim`). */
static void sb_trimmed(sbuf *b, const char *s) {
    size_t n = strlen(s), i = 0;
    while (i < n && is_ws(s[i])) i++;
    while (n > i && is_ws(s[n - 1])) n--;
    sb_put(b, s + i, n - i);
}

/* Text of a special token, or a fallback when the vocabulary lacks it. */
static const char *tok_text_or(const td_tok *t, int32_t id, const char *dflt) {
    const char *s = td_tok_text(t, id, NULL);
    return s ? s : dflt;
}

/* ChatML (SmolLM2, Qwen2):
 *   [<|im_start|>system\n{default}<|im_end|>\n]   when the template has a default
 *                                                 and the first message is not system
 *   <|im_start|>{role}\n{content}<|im_end|>\n      per message
 *   <|im_start|>assistant\n                        generation prompt */
static void render_chatml(const td_tok *t, const td_chat_msg *m, size_t n, bool gen, sbuf *b) {
    if (t->chat_system && n > 0 && strcmp(m[0].role, "system") != 0) {
        sb_str(b, "<|im_start|>system\n");
        sb_str(b, t->chat_system);
        sb_str(b, "<|im_end|>\n");
    }
    for (size_t i = 0; i < n; i++) {
        sb_str(b, "<|im_start|>");
        sb_str(b, m[i].role);
        sb_str(b, "\n");
        sb_str(b, m[i].content);
        sb_str(b, "<|im_end|>\n");
    }
    if (gen) sb_str(b, "<|im_start|>assistant\n");
}

/* Llama-3 (content trimmed of surrounding whitespace, as its template does):
 *   <|begin_of_text|>
 *   <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>   per message
 *   <|start_header_id|>assistant<|end_header_id|>\n\n                 generation prompt */
static void render_llama3(const td_chat_msg *m, size_t n, bool gen, sbuf *b) {
    sb_str(b, "<|begin_of_text|>");
    for (size_t i = 0; i < n; i++) {
        sb_str(b, "<|start_header_id|>");
        sb_str(b, m[i].role);
        sb_str(b, "<|end_header_id|>\n\n");
        sb_trimmed(b, m[i].content);
        sb_str(b, "<|eot_id|>");
    }
    if (gen) sb_str(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* Mistral (v0.1-style [INST] format):
 *   <s>                                   BOS text
 *   [INST] {system}\n\n{user} [/INST]     first user turn, when a system message leads
 *   [INST] {user} [/INST]                 other user turns
 *   {assistant}</s>                       assistant turns (EOS text)
 * The model answers right after [/INST], so the generation prompt adds
 * nothing. A system message anywhere but first is an error, as is a role
 * other than system/user/assistant. */
static int render_mistral(const td_tok *t, const td_chat_msg *m, size_t n, sbuf *b, td_err *err) {
    const char *sys = NULL;
    size_t i = 0;
    if (n > 0 && strcmp(m[0].role, "system") == 0) sys = m[i++].content;
    sb_str(b, tok_text_or(t, t->bos, "<s>"));
    for (; i < n; i++) {
        if (strcmp(m[i].role, "user") == 0) {
            sb_str(b, "[INST] ");
            if (sys) {
                sb_str(b, sys);
                sb_str(b, "\n\n");
                sys = NULL;
            }
            sb_str(b, m[i].content);
            sb_str(b, " [/INST]");
        } else if (strcmp(m[i].role, "assistant") == 0) {
            sb_str(b, m[i].content);
            sb_str(b, tok_text_or(t, t->eos, "</s>"));
        } else {
            return td_err_set(
                err, TD_E_ARG,
                "chat message %zu: role \"%.32s\" not supported by the Mistral format "
                "(system first, then user/assistant)",
                i, m[i].role);
        }
    }
    if (sys) { /* a system message and no user turn: it stands as the instruction */
        sb_str(b, "[INST] ");
        sb_str(b, sys);
        sb_str(b, " [/INST]");
    }
    return TD_OK;
}

int td_tok_chat_format(const td_tok *t, const td_chat_msg *msgs, size_t n_msgs,
                       bool add_generation_prompt, char **out, td_err *err) {
    if (out) *out = NULL;
    if (!t || !out || (!msgs && n_msgs))
        return td_err_set(err, TD_E_ARG, "td_tok_chat_format: NULL argument");
    for (size_t i = 0; i < n_msgs; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return td_err_set(err, TD_E_ARG, "chat message %zu: NULL role or content", i);
    }
    sbuf b = {0};
    int rc = TD_OK;
    sb_put(&b, "", 0); /* an empty conversation still yields "" */
    switch (t->chat) {
    case TD_CHAT_CHATML:
        render_chatml(t, msgs, n_msgs, add_generation_prompt, &b);
        break;
    case TD_CHAT_LLAMA3:
        render_llama3(msgs, n_msgs, add_generation_prompt, &b);
        break;
    case TD_CHAT_MISTRAL:
        rc = render_mistral(t, msgs, n_msgs, &b, err);
        break;
    case TD_CHAT_NONE:
    default: /* no template: the contents back to back */
        for (size_t i = 0; i < n_msgs; i++) sb_str(&b, msgs[i].content);
        break;
    }
    if (rc == TD_OK && b.oom) rc = td_err_set(err, TD_E_NOMEM, "td_tok_chat_format: out of memory");
    if (rc != TD_OK) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    return TD_OK;
}
