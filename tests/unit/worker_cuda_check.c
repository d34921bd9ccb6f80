/* worker_cuda_check.c — the worker's engine with --device cuda, on the CPU
 * emulator (tests/cuemu/), against the same engine on the CPU in the
 * reference order: what a coordinator gets back is the same bits.
 *   - Score (worker_score.c; on the GPU each row's score is computed where
 *     its logits are): every continuation token's logprob, greedy flag, and
 *     top-k ids and logprobs;
 *   - Prefill, then steps of Verify (a plain step, then draft trees: a chain
 *     copied from the history and a sibling branch) and Commit, greedy,
 *     seeded and in rejection mode: the walked path and, at every node, the
 *     sample, its logprob, the top candidates and the alternatives.
 * Makes its tiny model with td-mktiny's code; usage: worker_cuda_check. A
 * failing check prints and exits 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tok/tok.h"
#include "worker.h"
#include "check_exit.h"

int td_mktiny_run(int argc, char **argv); /* tests/tools/mktiny.c */

#define STEPS 8
#define MAX_HISTORY 256

static td_worker_engine *engine(const char *model, td_device dev) {
    td_worker_config cfg = {.role = TD_WORKER_VERIFIER, .model_path = model, .listen = "127.0.0.1:0", .threads = 1,
                            .max_seqs = 4, .ctx = 256, .max_rows = 64, .numerics = TD_NUMERICS_REFERENCE,
                            .device = dev, .batching = true};
    td_err err = {0};
    td_worker_engine *e = td_worker_engine_create(&cfg, &err);
    CHECK(e, "%s", err.msg);
    return e;
}

static bool same_f32(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

static void same_nodes(const td_node_result *a, const td_node_result *b, int32_t n, const char *what, int step) {
    for (int32_t i = 0; i < n; i++) {
        const td_node_result *x = &a[i], *y = &b[i];
        CHECK(x->sample == y->sample && same_f32(x->logprob, y->logprob) && x->n_top == y->n_top &&
                  x->n_alt == y->n_alt,
              "%s step %d node %d: sample %d/%d logprob %.9g/%.9g n_top %d/%d n_alt %d/%d", what, step, i, x->sample,
              y->sample, (double)x->logprob, (double)y->logprob, x->n_top, y->n_top, x->n_alt, y->n_alt);
        for (int32_t k = 0; k < x->n_top; k++) CHECK(x->top[k] == y->top[k], "%s step %d node %d top %d", what, step, i, k);
        for (int32_t k = 0; k < x->n_alt; k++)
            CHECK(x->alt_id[k] == y->alt_id[k] && same_f32(x->alt_logprob[k], y->alt_logprob[k]),
                  "%s step %d node %d alternative %d", what, step, i, k);
    }
}

/* A chain copied from after the last earlier occurrence of the history's
 * last token (prompt lookup, as a drafter would), and one sibling of its
 * first node. */
static void make_tree(const int32_t *hist, int32_t n, int32_t vocab, td_draft *t) {
    memset(t, 0, sizeof *t);
    int32_t at = -1;
    for (int32_t i = n - 2; i >= 0 && at < 0; i--)
        if (hist[i] == hist[n - 1]) at = i + 1;
    for (int32_t k = 0; at >= 0 && k < 3 && at + k < n; k++) {
        t->token[t->n] = hist[at + k];
        t->parent[t->n] = t->n - 1;
        t->n++;
    }
    t->token[t->n] = (hist[n - 1] * 7 + 3) % vocab; /* a sibling of the first node: likely rejected */
    t->parent[t->n] = -1;
    t->n++;
}

/* One sequence through both engines; returns the tokens produced. */
static int run_seq(td_worker_engine *cpu, td_worker_engine *gpu, uint64_t key, const td_target_seq_params *p,
                   const int32_t *prompt, int32_t n_prompt, const char *what) {
    td_err err = {0};
    int32_t cached = 0, reused = 0, vocab = td_worker_engine_info(cpu)->vocab_size;
    CHECK(td_worker_prefill(cpu, "check", key, p, prompt, (size_t)n_prompt, &cached, &reused, &err) == TD_OK, "%s",
          err.msg);
    CHECK(td_worker_prefill(gpu, "check", key, p, prompt, (size_t)n_prompt, &cached, &reused, &err) == TD_OK, "%s",
          err.msg);
    int32_t hist[MAX_HISTORY];
    memcpy(hist, prompt, (size_t)n_prompt * sizeof *hist);
    int32_t n_hist = n_prompt, produced = 0;
    static td_node_result nc[TD_DRAFT_MAX + 1], ng[TD_DRAFT_MAX + 1];
    for (int step = 0; step < STEPS; step++) {
        td_draft tree;
        if (step == 0) memset(&tree, 0, sizeof tree); /* a plain decoding step */
        else make_tree(hist, n_hist, vocab, &tree);
        int32_t pc[TD_DRAFT_MAX + 1], pg[TD_DRAFT_MAX + 1], n_pc = 0, n_pg = 0;
        td_pass_info pass;
        memset(nc, 0, sizeof nc);
        memset(ng, 0, sizeof ng);
        CHECK(td_worker_verify(cpu, "check", key, NULL, 0, &tree, nc, pc, &n_pc, &pass, &err) == TD_OK, "%s", err.msg);
        CHECK(td_worker_verify(gpu, "check", key, NULL, 0, &tree, ng, pg, &n_pg, &pass, &err) == TD_OK, "%s", err.msg);
        CHECK(n_pc == n_pg && !memcmp(pc, pg, (size_t)n_pc * sizeof *pc), "%s step %d: paths of %d and %d nodes", what,
              step, n_pc, n_pg);
        same_nodes(nc, ng, tree.n + 1, what, step);
        CHECK(td_worker_commit(cpu, "check", key, pc, n_pc, &cached, &err) == TD_OK, "%s", err.msg);
        CHECK(td_worker_commit(gpu, "check", key, pg, n_pg, &cached, &err) == TD_OK, "%s", err.msg);
        /* the path's tokens, then the target's sample after its last node */
        for (int32_t k = 0; k < n_pc && n_hist < MAX_HISTORY; k++) hist[n_hist++] = tree.token[pc[k]];
        int32_t last = n_pc > 0 ? pc[n_pc - 1] + 1 : 0;
        CHECK(nc[last].sample >= 0, "%s step %d: no sample at the walk's end", what, step);
        if (n_hist < MAX_HISTORY) hist[n_hist++] = nc[last].sample;
        produced += n_pc + 1;
    }
    CHECK(td_worker_release(cpu, "check", key) && td_worker_release(gpu, "check", key), "release");
    return produced;
}

int main(void) {
    char dir[] = "/tmp/worker_cuda_XXXXXX", model[64];
    CHECK(mkdtemp(dir), "mkdtemp");
    snprintf(model, sizeof model, "%s/tiny.gguf", dir);
    char *mk[] = {"td-mktiny", model, "--type", "Q4_1", NULL};
    CHECK(td_mktiny_run(4, mk) == 0, "td-mktiny");
    td_worker_engine *cpu = engine(model, (td_device){TD_DEVICE_CPU, 0});
    td_worker_engine *gpu = engine(model, (td_device){TD_DEVICE_CUDA, TD_DEVICE_LOCAL});
    CHECK(strstr(td_worker_engine_info(gpu)->fingerprint, "backend=cuda"), "%s", td_worker_engine_info(gpu)->fingerprint);
    const td_tok *tok = td_worker_engine_tok(cpu);
    const char *text = "the quick brown fox jumps over the lazy dog and the quick brown fox jumps over the";
    int32_t *prompt = NULL;
    size_t n_prompt = 0;
    td_err err = {0};
    CHECK(td_tok_encode(tok, text, strlen(text), false, false, &prompt, &n_prompt, &err) == TD_OK, "%s", err.msg);
    CHECK(n_prompt > 8 && n_prompt < 64, "%zu prompt tokens", n_prompt);

    /* Score: the first half conditions, the rest is scored */
    enum { TOP_K = 5 };
    size_t n_cond = n_prompt / 2, n_cont = n_prompt - n_cond;
    float lp[2][64], tlp[2][64 * TOP_K];
    bool gr[2][64];
    int32_t tid[2][64 * TOP_K];
    for (int d = 0; d < 2; d++) {
        td_worker_score_out out = {lp[d], gr[d], tid[d], tlp[d]};
        CHECK(td_worker_score(d ? gpu : cpu, "check", prompt, n_cond, prompt + n_cond, n_cont, TOP_K, &out, &err) ==
                  TD_OK,
              "%s", err.msg);
    }
    int greedy = 0;
    for (size_t i = 0; i < n_cont; i++) {
        CHECK(same_f32(lp[0][i], lp[1][i]) && gr[0][i] == gr[1][i], "score %zu: %.9g/%.9g", i, (double)lp[0][i],
              (double)lp[1][i]);
        greedy += gr[0][i];
        for (int k = 0; k < TOP_K; k++)
            CHECK(tid[0][i * TOP_K + k] == tid[1][i * TOP_K + k] && same_f32(tlp[0][i * TOP_K + k], tlp[1][i * TOP_K + k]),
                  "score %zu alternative %d", i, k);
    }

    /* Verify and Commit: greedy, seeded, rejection mode */
    td_target_seq_params p = {.max_new_tokens = 64, .n_top = 4, .n_logprobs = 3};
    int produced[3];
    p.sample = (td_sample_params){.temperature = 0, .top_p = 1, .repeat_penalty = 1, .repeat_last_n = 64};
    produced[0] = run_seq(cpu, gpu, 1, &p, prompt, (int32_t)n_prompt, "greedy");
    p.sample = (td_sample_params){.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .repeat_penalty = 1,
                                  .repeat_last_n = 64, .seed = 7};
    produced[1] = run_seq(cpu, gpu, 2, &p, prompt, (int32_t)n_prompt, "seeded");
    p.mode = TD_SPEC_REJECTION;
    produced[2] = run_seq(cpu, gpu, 3, &p, prompt, (int32_t)n_prompt, "rejection");
    printf("worker_cuda_check: the CUDA engine answers as the CPU's, bit for bit: Score (%zu tokens, %d greedy, top %d), "
           "%d steps of Verify and Commit greedy / seeded / rejection (%d, %d, %d tokens)\n",
           n_cont, greedy, TOP_K, STEPS, produced[0], produced[1], produced[2]);
    free(prompt);
    td_worker_engine_destroy(gpu);
    td_worker_engine_destroy(cpu);
    unlink(model);
    rmdir(dir);
    return 0;
}
