/* test_gen.c — streaming of generated text: td_textout keeps a caller's stop,
 * a stop string and running out of memory apart, and tokens whose text is
 * longer than any fixed buffer (here 300 bytes each) reach the callback
 * whole from both td_gen_run and td_spec_run (they were once cut at 256).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gen/gen.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "spec/spec.h"
#include "tok/tok.h"

enum { LONG = 300 }; /* bytes of every ordinary token's text */

typedef struct sink {
    char *buf;
    size_t len, cap;
    int calls, stop_after; /* stop_after > 0: ask to stop on that call */
} sink;

static int sink_emit(void *user, const char *text, size_t len) {
    sink *k = user;
    if (k->len + len > k->cap) {
        k->cap = (k->len + len) * 2;
        k->buf = realloc(k->buf, k->cap);
        assert_non_null(k->buf);
    }
    memcpy(k->buf + k->len, text, len);
    k->len += len;
    k->calls++;
    return k->stop_after > 0 && k->calls >= k->stop_after;
}

/* ---- td_textout ---- */

static void test_textout_results(void **state) {
    (void)state;
    sink k = {0};
    const char *stops[] = {"STOP"};
    td_textout *o = td_textout_create(stops, 1, sink_emit, &k, NULL);
    assert_non_null(o);
    assert_int_equal(td_textout_push(o, "hello ", 6), 0);
    /* a size whose doubling overflows cannot be had: out of memory, and
     * nothing of it is taken (bytes is never read) */
    assert_int_equal(td_textout_push(o, "x", SIZE_MAX / 2 + 1), TD_E_NOMEM);
    assert_int_equal(td_textout_push(o, "world ST", 8), 0);
    assert_int_equal(td_textout_push(o, "OP and more", 11), TD_TEXTOUT_STOP_STRING);
    assert_int_equal(k.len, 12);
    assert_memory_equal(k.buf, "hello world ", 12);
    td_textout_destroy(o);

    /* the callback's stop is its own result, not an error */
    sink c = {.stop_after = 1};
    o = td_textout_create(NULL, 0, sink_emit, &c, NULL);
    assert_non_null(o);
    assert_int_equal(td_textout_push(o, "abc", 3), TD_TEXTOUT_STOP_CALLER);
    td_textout_destroy(o);

    /* a long push comes out whole, in one piece */
    sink w = {0};
    o = td_textout_create(NULL, 0, sink_emit, &w, NULL);
    char big[5000];
    memset(big, 'q', sizeof big);
    assert_int_equal(td_textout_push(o, big, sizeof big), 0);
    assert_int_equal(w.len, sizeof big);
    assert_int_equal(w.calls, 1);
    td_textout_destroy(o);
    free(k.buf);
    free(c.buf);
    free(w.buf);
}

/* ---- long tokens through the generation loops ---- */

static struct {
    char dir[64], path[128];
    td_gguf *g;
    td_model *m;
    td_tok *tok;      /* the model's own (unused but for its size) */
    td_tok *longtok;  /* same size, every ordinary token LONG bytes */
    td_pool *pool;
} T;

/* A SentencePiece tokenizer of n tokens: <unk>, <s>, </s>, then tokens
 * whose texts are LONG copies of one letter (plus a serial, so all differ). */
static int build_long_tok(int32_t n, td_tok **out) {
    char **text = calloc((size_t)n, sizeof *text);
    int32_t *type = calloc((size_t)n, sizeof *type);
    float *score = calloc((size_t)n, sizeof *score);
    if (!text || !type || !score) return -1;
    static const char *const fixed[] = {"<unk>", "<s>", "</s>"};
    for (int32_t i = 0; i < n; i++) {
        if (i < 3) {
            text[i] = strdup(fixed[i]);
            type[i] = i ? 3 : 2;
        } else {
            text[i] = malloc(LONG + 1);
            if (text[i]) {
                memset(text[i], 'a' + i % 26, LONG);
                snprintf(text[i] + LONG - 4, 5, "%04d", (int)(i % 10000));
            }
            type[i] = 1;
        }
        if (!text[i]) return -1;
        score[i] = -(float)i;
    }
    td_gguf_writer *w = td_gguf_writer_create();
    int rc = !w;
    if (!rc) rc |= td_gguf_writer_add_str(w, "tokenizer.ggml.model", "llama");
    if (!rc) rc |= td_gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", (const char *const *)text, (size_t)n);
    if (!rc) rc |= td_gguf_writer_add_i32_array(w, "tokenizer.ggml.token_type", type, (size_t)n);
    if (!rc) rc |= td_gguf_writer_add_f32_array(w, "tokenizer.ggml.scores", score, (size_t)n);
    void *file = NULL;
    size_t size = 0;
    td_err err = {0};
    td_gguf *g = NULL;
    if (!rc) rc = td_gguf_writer_to_memory(w, &file, &size, &err);
    if (!rc) rc = td_gguf_open_memory(file, size, &g, &err);
    if (!rc) rc = td_tok_create(g, out, &err);
    if (rc) fprintf(stderr, "# long tokenizer: %s\n", err.msg);
    td_gguf_close(g);
    free(file);
    td_gguf_writer_destroy(w);
    for (int32_t i = 0; i < n; i++) free(text[i]);
    free(text);
    free(type);
    free(score);
    return rc;
}

static int setup(void **s) {
    (void)s;
    snprintf(T.dir, sizeof T.dir, "/tmp/td_gen_XXXXXX");
    if (!mkdtemp(T.dir)) return -1;
    snprintf(T.path, sizeof T.path, "%s/tiny.gguf", T.dir);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s/td-mktiny %s --type Q8_0 > /dev/null", TD_BINARY_DIR, T.path);
    if (system(cmd) != 0) return -1;
    td_err err = {0};
    if (td_gguf_open(T.path, &T.g, &err) || td_model_load(T.g, &T.m, &err) || td_tok_create(T.g, &T.tok, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    if (build_long_tok(td_tok_vocab_size(T.tok), &T.longtok)) return -1;
    T.pool = td_pool_create(2, NULL);
    return T.pool ? 0 : -1;
}

static int teardown(void **s) {
    (void)s;
    td_pool_destroy(T.pool);
    td_tok_destroy(T.longtok);
    td_tok_destroy(T.tok);
    td_model_free(T.m);
    td_gguf_close(T.g);
    unlink(T.path);
    rmdir(T.dir);
    return 0;
}

/* The bytes the tokens should stream as: each ordinary token's full text. */
static size_t expected_text(const int32_t *ids, int32_t n, char *out) {
    size_t len = 0;
    for (int32_t i = 0; i < n; i++) {
        int k = td_tok_piece(T.longtok, ids[i], false, out + len, LONG + 1);
        assert_true(k >= 0 && k <= LONG);
        len += (size_t)k;
    }
    return len;
}

static void test_long_pieces_streamed_whole(void **state) {
    (void)state;
    enum { N = 12 };
    int32_t prompt[] = {5, 17, 42, 99, 5, 17};
    size_t n_prompt = sizeof prompt / sizeof *prompt;
    td_gen_params gp = {.sample = td_sample_defaults(), .max_tokens = N, .ignore_eos = true};
    td_kv *kv = td_kv_create(T.m, 1, 128, NULL);
    td_ctx *ctx = td_ctx_create(T.m, 64, T.pool, NULL);
    assert_non_null(kv);
    assert_non_null(ctx);
    td_err err = {0};
    int32_t ids[N];
    td_gen_stats st;
    sink k = {0};
    assert_int_equal(td_gen_run(T.m, T.longtok, ctx, kv, 0, prompt, n_prompt, &gp, sink_emit, &k, ids, &st, &err),
                     TD_OK);
    assert_int_equal(st.n_generated, N);
    char *want = malloc((size_t)N * LONG);
    assert_non_null(want);
    size_t n_want = expected_text(ids, N, want);
    assert_true(n_want >= (size_t)LONG); /* at least one ordinary token, else the test proves nothing */
    assert_int_equal(k.len, n_want);
    assert_memory_equal(k.buf, want, n_want);

    /* the speculative loop streams the same bytes */
    td_kv_truncate(kv, 0, 0);
    td_drafter *d = td_spec_lookup_create(1, 4, NULL);
    assert_non_null(d);
    sink ks = {0};
    int32_t got[N];
    td_spec_params spp = td_spec_defaults();
    td_spec_request rq = {.prompt = prompt, .n_prompt = n_prompt, .gen = gp, .emit = sink_emit, .user = &ks,
                          .out_tokens = got};
    assert_int_equal(td_spec_run(T.m, T.longtok, ctx, kv, &rq, 1, &d, 1, &spp, &err), TD_OK);
    assert_memory_equal(got, ids, sizeof ids);
    assert_int_equal(ks.len, n_want);
    assert_memory_equal(ks.buf, want, n_want);

    /* a caller's stop ends both loops normally, with the reason "caller" */
    td_kv_truncate(kv, 0, 0);
    sink kc = {.stop_after = 1};
    assert_int_equal(td_gen_run(T.m, T.longtok, ctx, kv, 0, prompt, n_prompt, &gp, sink_emit, &kc, NULL, &st, &err),
                     TD_OK);
    assert_int_equal(st.stop, TD_STOP_CALLER);
    td_kv_truncate(kv, 0, 0);
    sink kc2 = {.stop_after = 1};
    rq = (td_spec_request){.prompt = prompt, .n_prompt = n_prompt, .gen = gp, .emit = sink_emit, .user = &kc2};
    assert_int_equal(td_spec_run(T.m, T.longtok, ctx, kv, &rq, 1, &d, 1, &spp, &err), TD_OK);
    assert_int_equal(rq.stats.stop, TD_STOP_CALLER);

    td_drafter_destroy(d);
    free(want);
    free(k.buf);
    free(ks.buf);
    free(kc.buf);
    free(kc2.buf);
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_textout_results),
        cmocka_unit_test_setup_teardown(test_long_pieces_streamed_whole, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
