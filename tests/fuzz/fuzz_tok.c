/* fuzz_tok.c — libFuzzer target for the tokenizers: arbitrary bytes are
 * encoded, arbitrary id lists decoded (whole and piece by piece, into short
 * buffers), and arbitrary messages formatted with every chat family. Five
 * small tokenizers are built in memory at start-up (byte-level BPE with four
 * pre-tokenizers, SentencePiece), each with a different chat template.
 *
 * Input: byte 0 picks the operation (encode / decode / chat) and the
 * tokenizer, byte 1 holds flags (add_bos, parse_special, render_special,
 * add_generation_prompt, a piece buffer size); the rest is the payload.
 * Besides the sanitizers, it traps on: a failure without a message, an id
 * outside the vocabulary, a piece that writes past its buffer or disagrees
 * with the decode, byte-level BPE text that does not come back unchanged
 * from decode(encode(text)), and a chat rendering that is not a C string of
 * the returned length.
 * Build: clang -fsanitize=fuzzer,address,undefined (CMake: -DTANDEM_FUZZ=ON).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf/gguf.h"
#include "tok/tok.h"
#include "fuzz_check.h"


enum { N_TOK = 5, MAX_IDS = 1024 };
static td_tok *toks[N_TOK];
static bool byte_level[N_TOK]; /* decode(encode(x)) == x holds for these */

/* GPT-2's byte alphabet: printable bytes stand for themselves, the others
 * are shifted past 0xFF. */
static uint32_t byte_cp(unsigned b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) return b;
    unsigned n = 0;
    for (unsigned c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE)) n++;
    return 0x100 + n;
}

static void put_utf8(uint32_t cp, char *o) {
    if (cp < 0x80) o[0] = (char)cp, o[1] = 0;
    else o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 63)), o[2] = 0;
}

static td_tok *from_writer(td_gguf_writer *w) {
    void *file = NULL;
    size_t size = 0;
    td_err err;
    td_gguf *g = NULL;
    td_tok *t = NULL;
    if (td_gguf_writer_to_memory(w, &file, &size, &err) || td_gguf_open_memory(file, size, &g, &err) ||
        td_tok_create(g, &t, &err)) {
        fprintf(stderr, "fuzz_tok: cannot build a tokenizer: %s\n", err.msg);
        abort();
    }
    td_gguf_close(g); /* the tokenizer keeps copies */
    free(file);
    td_gguf_writer_destroy(w);
    return t;
}

/* Byte-level BPE: 256 byte symbols, a few merges, then special tokens
 * (control, type 3) and one user-defined token (type 4). */
static td_tok *bpe(const char *pre, const char *tmpl, const char *const *specials, size_t n_special) {
    static const char *const merges[] = {"\xc4\xa0 t", "h e", "\xc4\xa0t he", "i n", "\xc4\xa0 a", "e r",
                                         "a n", "o n", "1 2", "\xc4\xa0 \xc4\xa0", "\xc4\x8a \xc4\x8a"};
    static const char *const merged[] = {"\xc4\xa0t", "he", "\xc4\xa0the", "in", "\xc4\xa0\x61", "er",
                                         "an", "on", "12", "\xc4\xa0\xc4\xa0", "\xc4\x8a\xc4\x8a"};
    enum { N_MERGE = sizeof merges / sizeof *merges };
    size_t n = 256 + N_MERGE + n_special + 1;
    char bytes[256][4];
    const char **text = calloc(n, sizeof *text);
    int32_t *type = calloc(n, sizeof *type);
    if (!text || !type) abort();
    for (unsigned b = 0; b < 256; b++) {
        put_utf8(byte_cp(b), bytes[b]);
        text[b] = bytes[b];
        type[b] = 1;
    }
    for (size_t i = 0; i < N_MERGE; i++) text[256 + i] = merged[i], type[256 + i] = 1;
    for (size_t i = 0; i < n_special; i++) text[256 + N_MERGE + i] = specials[i], type[256 + N_MERGE + i] = 3;
    text[n - 1] = "<user_tok>";
    type[n - 1] = 4;
    td_gguf_writer *w = td_gguf_writer_create();
    if (!w) abort();
    int rc = td_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    rc |= td_gguf_writer_add_str(w, "tokenizer.ggml.pre", pre);
    rc |= td_gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", text, n);
    rc |= td_gguf_writer_add_i32_array(w, "tokenizer.ggml.token_type", type, n);
    rc |= td_gguf_writer_add_str_array(w, "tokenizer.ggml.merges", merges, N_MERGE);
    rc |= td_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 256 + N_MERGE);
    rc |= td_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)(256 + N_MERGE + n_special - 1));
    if (tmpl) rc |= td_gguf_writer_add_str(w, "tokenizer.chat_template", tmpl);
    if (rc) abort();
    free(text);
    free(type);
    return from_writer(w);
}

/* SentencePiece: <unk> <s> </s>, the 256 <0xXX> byte tokens, a few words. */
static td_tok *spm(const char *tmpl) {
    static const char *const words[] = {"\xe2\x96\x81", "a", "b", "c", "\xe2\x96\x81\x61", "ab", "[INST]", "[/INST]"};
    static const float word_score[] = {-5, -10, -10, -10, -1, -0.5f, 0, 0};
    enum { N = 3 + 256 + 8 };
    char hex[256][8];
    const char *text[N];
    int32_t type[N];
    float score[N];
    static const char *const fixed[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++) text[i] = fixed[i], type[i] = i ? 3 : 2, score[i] = 0;
    for (int b = 0; b < 256; b++) {
        snprintf(hex[b], sizeof hex[b], "<0x%02X>", b);
        text[3 + b] = hex[b], type[3 + b] = 6, score[3 + b] = 0;
    }
    for (int i = 0; i < 8; i++) text[259 + i] = words[i], type[259 + i] = i < 6 ? 1 : 3, score[259 + i] = word_score[i];
    td_gguf_writer *w = td_gguf_writer_create();
    if (!w) abort();
    int rc = td_gguf_writer_add_str(w, "tokenizer.ggml.model", "llama");
    rc |= td_gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", text, N);
    rc |= td_gguf_writer_add_i32_array(w, "tokenizer.ggml.token_type", type, N);
    rc |= td_gguf_writer_add_f32_array(w, "tokenizer.ggml.scores", score, N);
    rc |= td_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1);
    rc |= td_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2);
    if (tmpl) rc |= td_gguf_writer_add_str(w, "tokenizer.chat_template", tmpl);
    if (rc) abort();
    return from_writer(w);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    static const char *const chatml[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    static const char *const llama3[] = {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                         "<|eot_id|>"};
    static const char chatml_tmpl[] =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a fuzz target<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
    toks[0] = bpe("smollm", chatml_tmpl, chatml, 3);
    toks[1] = bpe("llama3", "{{ bos_token }}<|start_header_id|>{{ role }}<|end_header_id|>", llama3, 4);
    toks[2] = bpe("qwen2", NULL, chatml, 3);
    toks[3] = bpe("default", "[INST] {{ content }} [/INST]", chatml, 3);
    toks[4] = spm("{{ bos_token }}[INST] {{ content }} [/INST]");
    for (int i = 0; i < 4; i++) byte_level[i] = true;
    return 0;
}

static void fuzz_decode(const td_tok *t, const int32_t *ids, size_t n, bool render, size_t cap) {
    int32_t vocab = td_tok_vocab_size(t);
    bool all_ok = true;
    for (size_t i = 0; i < n; i++) all_ok &= ids[i] >= 0 && ids[i] < vocab;
    char *out = NULL;
    size_t len = 0;
    td_err err;
    int rc = td_tok_decode(t, ids, n, render, &out, &len, &err);
    FZ_CHECK(rc == TD_OK || err.msg[0]);
    FZ_CHECK(rc != TD_OK || all_ok); /* a bad id must be refused */
    if (rc == TD_OK) FZ_CHECK(out[len] == '\0');
    /* pieces: never written past cap; what fits is the decode's bytes */
    char buf[64 + 8];
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        memset(buf, 0xA5, sizeof buf);
        int k = td_tok_piece(t, ids[i], render, buf, cap);
        for (size_t j = cap; j < sizeof buf; j++) FZ_CHECK((unsigned char)buf[j] == 0xA5);
        if (ids[i] < 0 || ids[i] >= vocab) {
            FZ_CHECK(k < 0);
            continue;
        }
        FZ_CHECK(k >= 0);
        /* SentencePiece drops the first text token's prefixed space: compare
         * byte-level vocabularies only, where decode is the concatenation */
        if (rc == TD_OK && out && t != toks[4]) {
            size_t m = (size_t)k < cap ? (size_t)k : cap;
            FZ_CHECK(off + (size_t)k <= len);
            FZ_CHECK(memcmp(out + off, buf, m) == 0);
        }
        off += (size_t)k;
    }
    if (rc == TD_OK && t != toks[4]) FZ_CHECK(off == len);
    free(out);
}

static void fuzz_encode(int which, const uint8_t *data, size_t size, bool bos, bool special) {
    const td_tok *t = toks[which];
    int32_t *ids = NULL;
    size_t n = 0;
    td_err err;
    int rc = td_tok_encode(t, (const char *)data, size, bos, special, &ids, &n, &err);
    FZ_CHECK(rc == TD_OK || (err.msg[0] && ids == NULL));
    if (rc != TD_OK) return;
    for (size_t i = 0; i < n; i++) FZ_CHECK(ids[i] >= 0 && ids[i] < td_tok_vocab_size(t));
    if (byte_level[which] && !bos && !special) {
        /* byte-level BPE loses nothing: every byte has a symbol */
        char *back = NULL;
        size_t len = 0;
        FZ_CHECK(td_tok_decode(t, ids, n, false, &back, &len, &err) == TD_OK);
        FZ_CHECK(len == size && memcmp(back, data, size) == 0);
        free(back);
    }
    free(ids);
}

/* Payload: NUL-separated fields, taken as role, content, role, content... */
static void fuzz_chat(const td_tok *t, const uint8_t *data, size_t size, bool gen) {
    enum { MAX_MSG = 8 };
    char *copy = malloc(size + 1);
    if (!copy) return;
    memcpy(copy, data, size);
    copy[size] = '\0';
    char *field[2 * MAX_MSG];
    size_t nf = 0;
    for (char *p = copy; nf < 2 * MAX_MSG && p <= copy + size; p += strlen(p) + 1) field[nf++] = p;
    td_chat_msg msgs[MAX_MSG];
    size_t nm = nf / 2;
    for (size_t i = 0; i < nm; i++) msgs[i] = (td_chat_msg){field[2 * i], field[2 * i + 1]};
    char *out = NULL;
    td_err err;
    int rc = td_tok_chat_format(t, msgs, nm, gen, &out, &err);
    FZ_CHECK(rc == TD_OK || err.msg[0]);
    if (rc == TD_OK) {
        FZ_CHECK(out != NULL);
        size_t len = strlen(out);
        /* the rendering is then encoded as the CLI does */
        int32_t *ids = NULL;
        size_t n = 0;
        if (td_tok_encode(t, out, len, false, true, &ids, &n, &err) == TD_OK) {
            for (size_t i = 0; i < n; i++) FZ_CHECK(ids[i] >= 0 && ids[i] < td_tok_vocab_size(t));
            free(ids);
        } else {
            FZ_CHECK(err.msg[0]);
        }
    }
    free(out);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    int op = data[0] % 3, which = (data[0] / 3) % N_TOK;
    uint8_t fl = data[1];
    bool bos = fl & 1, special = fl & 2, render = fl & 4, gen = fl & 8;
    size_t cap = (size_t)(fl >> 4) * 4; /* 0..60 bytes of piece buffer */
    data += 2;
    size -= 2;
    if (op == 0) {
        fuzz_encode(which, data, size, bos, special);
    } else if (op == 1) {
        int32_t ids[MAX_IDS];
        size_t n = size / 4 < MAX_IDS ? size / 4 : MAX_IDS;
        for (size_t i = 0; i < n; i++) {
            uint32_t v = (uint32_t)data[4 * i] | (uint32_t)data[4 * i + 1] << 8 | (uint32_t)data[4 * i + 2] << 16 |
                         (uint32_t)data[4 * i + 3] << 24;
            /* mostly small ids (valid ones), sometimes anything */
            ids[i] = (v >> 31) ? (int32_t)v : (int32_t)(v % 320);
        }
        fuzz_decode(toks[which], ids, n, render, cap);
    } else {
        fuzz_chat(toks[which], data, size, gen);
    }
    return 0;
}
