/* tp_cuda_check.c — a tensor-parallel group of CUDA ranks, run on the CPU
 * emulator (tests/cuemu/) under `mpirun -np 2` on a tiny model (usage:
 * tp_cuda_check MODEL [nccl]; test_cuemu_cli.sh makes the model and runs
 * it). The CUDA contexts' group meets over MPI (host buffers), or with
 * nccl over the NCCL backend (device buffers; the emulator's NCCL); the
 * CPU contexts' always over MPI.
 * Every rank loads its shard and runs the same passes on a CPU context in
 * the reference order and on a CUDA context, both over the group's
 * communicator, and checks that a CUDA rank computes a CPU rank's bits:
 *   - logits of a prefill pass (every row), of one-row passes, of a token
 *     tree and of the row after its compaction: bitwise equal;
 *   - what a pass is asked for on the device (seeded picks, scores with
 *     alternatives) against the CPU's definition on the same rows;
 *   - as a server's group (the worker with --device cuda --tp 2): rank 0
 *     leads its CUDA context and cache, rank 1 follows; the leader's passes
 *     (picks and scores asked of td_model_forward_out) and a truncation
 *     between them give those answers again;
 *   - the invariant order (td_cuda_ctx_set_invariant): the split model's
 *     logits of a prefill pass and of one-row passes bitwise those of the
 *     unsplit model (rank 0 loads it too) in the same order on the device.
 * A failing check prints and exits 1 without shutting MPI down, so mpirun
 * ends the whole job instead of leaving the other rank waiting.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "sample/sample.h"
#include "check_exit.h"

#define N_PROMPT 24
#define N_SCORED 8
#define MAX_ROWS 32

typedef struct env {
    td_comm *comm;  /* the CPU contexts' group (MPI) */
    td_comm *gcomm; /* the CUDA contexts' (MPI or NCCL) */
    td_model *m;
    td_pool *pool;
    int32_t V;
    td_ctx *cpu, *gpu;
    float *lc, *lg; /* (MAX_ROWS, V) logits of the CPU and the CUDA pass */
} env;

static td_ctx *make_ctx(env *e, const td_model *m, td_device dev, td_numerics order, td_comm *comm) {
    td_err err = {0};
    td_ctx *c = td_ctx_create_on(m, MAX_ROWS, e->pool, dev, &err);
    CHECK(c, "%s", err.msg);
    td_ctx_set_numerics(c, order);
    if (comm) CHECK(td_ctx_set_comm(c, comm, &err) == TD_OK, "%s", err.msg);
    return c;
}

static const td_device CUDA = {TD_DEVICE_CUDA, TD_DEVICE_LOCAL};

/* The invariant order: the split model's passes against the unsplit
 * model's (rank 0), both on the device. */
static void check_invariant(env *e, td_gguf *g, const int32_t *ids) {
    td_err err = {0};
    td_model *whole = NULL;
    td_ctx *cw = NULL;
    td_kv *kw = NULL;
    if (check_rank == 0) {
        CHECK(td_model_load(g, &whole, &err) == TD_OK, "%s", err.msg);
        cw = make_ctx(e, whole, CUDA, TD_NUMERICS_TP_INVARIANT, NULL);
        CHECK((kw = td_kv_create(whole, 1, 128, &err)), "%s", err.msg);
    }
    td_ctx *cs = make_ctx(e, e->m, CUDA, TD_NUMERICS_TP_INVARIANT, e->gcomm);
    td_kv *ks = td_kv_create(e->m, 1, 128, &err);
    CHECK(ks, "%s", err.msg);
    td_row rows[MAX_ROWS];
    int32_t pos = 0, n = N_PROMPT, next = 0;
    for (int step = 0; step < 4; step++) {
        for (int32_t i = 0; i < n; i++) rows[i] = td_row_linear(0, pos + i, step == 0 ? ids[i] : next, true);
        CHECK(td_model_forward(cs, ks, rows, n, e->lg, &err) == TD_OK, "invariant, split: %s", err.msg);
        if (check_rank == 0) {
            CHECK(td_model_forward(cw, kw, rows, n, e->lc, &err) == TD_OK, "invariant, whole: %s", err.msg);
            CHECK(memcmp(e->lc, e->lg, (size_t)n * e->V * sizeof(float)) == 0,
                  "invariant order: the split model's logits differ from the whole model's (pass %d)", step);
        }
        next = td_sample_argmax(e->lg + (size_t)(n - 1) * e->V, e->V);
        pos += n;
        n = 1;
    }
    td_kv_destroy(ks);
    td_ctx_destroy(cs);
    td_kv_destroy(kw);
    td_ctx_destroy(cw);
    td_model_free(whole);
}

/* The same rows through both contexts; every row's logits bitwise equal. */
static void both(env *e, td_kv *kc, td_kv *kg, const td_row *rows, int32_t n, const char *what) {
    td_err err = {0};
    int32_t n_out = 0;
    for (int32_t i = 0; i < n; i++) n_out += rows[i].logits;
    CHECK(td_model_forward(e->cpu, kc, rows, n, e->lc, &err) == TD_OK, "%s: %s", what, err.msg);
    CHECK(td_model_forward(e->gpu, kg, rows, n, e->lg, &err) == TD_OK, "%s: %s", what, err.msg);
    for (int32_t j = 0; j < n_out; j++)
        for (int32_t v = 0; v < e->V; v++) {
            size_t at = (size_t)j * e->V + v;
            CHECK(memcmp(&e->lc[at], &e->lg[at], sizeof(float)) == 0, "%s: row %d token %d: cpu %.9g cuda %.9g", what,
                  j, v, (double)e->lc[at], (double)e->lg[at]);
        }
}

static void same_scores(const td_sample_score *a, const td_sample_score *b, int32_t n, const char *what) {
    for (int32_t j = 0; j < n; j++) {
        CHECK(a[j].sum == b[j].sum && !memcmp(&a[j].max, &b[j].max, sizeof(float)) &&
                  !memcmp(&a[j].logit, &b[j].logit, sizeof(float)) && a[j].argmax == b[j].argmax &&
                  a[j].n_alt == b[j].n_alt,
              "%s: row %d's score (sum %.17g/%.17g, argmax %d/%d, n_alt %d/%d)", what, j, a[j].sum, b[j].sum,
              a[j].argmax, b[j].argmax, a[j].n_alt, b[j].n_alt);
        for (int32_t k = 0; k < a[j].n_alt; k++)
            CHECK(a[j].alt_id[k] == b[j].alt_id[k] && !memcmp(&a[j].alt_logit[k], &b[j].alt_logit[k], sizeof(float)),
                  "%s: row %d's alternative %d", what, j, k);
    }
}

/* Rows 0..n of sequence seq from position pos0: ids, each row's target the next id. */
static void scored_rows(const int32_t *ids, int32_t seq, int32_t pos0, int32_t n, td_row *rows, int32_t *targets) {
    for (int32_t i = 0; i < n; i++) {
        rows[i] = td_row_linear(seq, pos0 + i, ids[pos0 + i], true);
        targets[i] = ids[pos0 + i + 1];
    }
}

int main(int argc, char **argv) {
    CHECK(argc == 2 || (argc == 3 && !strcmp(argv[2], "nccl")), "usage: tp_cuda_check MODEL [nccl] (under mpirun -np 2)");
    td_err err = {0};
    env e = {0};
    CHECK((e.comm = td_comm_open("mpi", &err)), "%s", err.msg);
    e.gcomm = e.comm;
    if (argc == 3) CHECK((e.gcomm = td_comm_open("nccl", &err)), "%s", err.msg);
    check_rank = td_comm_rank(e.comm);
    const int size = td_comm_size(e.comm);
    CHECK(size == 2, "run under mpirun -np 2 (got %d ranks)", size);
    td_gguf *g = NULL;
    CHECK(td_gguf_open(argv[1], &g, &err) == TD_OK, "%s", err.msg);
    CHECK(td_model_load_shard(g, check_rank, size, &e.m, &err) == TD_OK, "%s", err.msg);
    CHECK((e.pool = td_pool_create(1, &err)), "%s", err.msg);
    e.V = td_model_hparams(e.m)->n_vocab;
    e.lc = malloc((size_t)MAX_ROWS * e.V * sizeof(float));
    e.lg = malloc((size_t)MAX_ROWS * e.V * sizeof(float));
    CHECK(e.lc && e.lg, "out of memory");
    e.cpu = make_ctx(&e, e.m, (td_device){TD_DEVICE_CPU, 0}, TD_NUMERICS_REFERENCE, e.comm);
    e.gpu = make_ctx(&e, e.m, CUDA, TD_NUMERICS_REFERENCE, e.gcomm);
    CHECK(td_ctx_set_comm(e.gpu, e.gcomm, &err) == TD_OK, "joining the same group again: %s", err.msg);
    if (e.gcomm != e.comm) { /* host buffers cannot go through NCCL, nor a CUDA rank join a second group */
        td_ctx *other = td_ctx_create(e.m, 4, e.pool, &err);
        CHECK(other, "%s", err.msg);
        CHECK(td_ctx_set_comm(other, e.gcomm, &err) == TD_E_ARG && strstr(err.msg, "host buffers"),
              "a CPU context took NCCL's device buffers: %s", err.msg);
        td_ctx_destroy(other);
        CHECK(td_ctx_set_comm(e.gpu, e.comm, &err) == TD_E_ARG, "a CUDA rank joined a second group");
    }
    td_kv *kc = td_kv_create(e.m, 2, 128, &err), *kg = td_kv_create(e.m, 2, 128, &err);
    CHECK(kc && kg, "%s", err.msg);

    /* 1. a prefill pass with every row's logits, then one-row passes */
    int32_t ids[N_PROMPT + 1];
    for (int32_t i = 0; i <= N_PROMPT; i++) ids[i] = (i * 37 + 5) % e.V;
    td_row rows[MAX_ROWS];
    for (int32_t i = 0; i < N_PROMPT; i++) rows[i] = td_row_linear(0, i, ids[i], true);
    both(&e, kc, kg, rows, N_PROMPT, "prefill");
    int32_t pos = N_PROMPT, next = td_sample_argmax(e.lc + (size_t)(N_PROMPT - 1) * e.V, e.V);
    for (int step = 0; step < 4; step++, pos++) {
        rows[0] = td_row_linear(0, pos, next, true);
        both(&e, kc, kg, rows, 1, "one-row pass");
        next = td_sample_argmax(e.lc, e.V);
    }
    /* 2. a token tree (a root, two children, a grandchild under the
     * second), then the accepted path kept and the row after it */
    const int32_t base = pos;
    rows[0] = (td_row){0, pos, next, true, true, -1};
    rows[1] = (td_row){0, pos + 1, ids[3], true, true, 0};
    rows[2] = (td_row){0, pos + 1, ids[4], true, true, 0};
    rows[3] = (td_row){0, pos + 2, ids[5], true, true, 2};
    both(&e, kc, kg, rows, 4, "tree");
    const int32_t keep[3] = {0, 2, 3};
    CHECK(td_kv_compact(kc, 0, base, keep, 3) == TD_OK && td_kv_compact(kg, 0, base, keep, 3) == TD_OK, "compact");
    rows[0] = td_row_linear(0, base + 3, ids[6], true);
    both(&e, kc, kg, rows, 1, "after compaction");

    /* 3. what the device computes from the gathered logits: seeded picks
     * and scores, against the CPU's definition of the same rows */
    td_sample_params sp = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.0f, .repeat_penalty = 1.0f,
                           .repeat_last_n = 64, .seed = 7};
    td_sample_plan plans[N_SCORED];
    for (int32_t j = 0; j < N_SCORED; j++) CHECK(td_sample_plan_make(&sp, j + 1, &plans[j]), "plan %d", j);
    int32_t targets[N_SCORED], want_picks[N_SCORED], picks[N_SCORED];
    td_sample_score want_scores[N_SCORED], scores[N_SCORED];
    scored_rows(ids, 1, 0, N_SCORED, rows, targets);
    td_pass_out oc = {.picks = want_picks, .plans = plans, .scores = want_scores, .targets = targets, .n_alt = 3};
    CHECK(td_model_forward_out(e.cpu, kc, rows, N_SCORED, e.lc, &oc, &err) == TD_OK, "%s", err.msg);
    td_pass_out og = {.picks = picks, .plans = plans, .scores = scores, .targets = targets, .n_alt = 3};
    CHECK(td_model_forward_out(e.gpu, kg, rows, N_SCORED, NULL, &og, &err) == TD_OK, "%s", err.msg);
    int decided = 0;
    for (int32_t j = 0; j < N_SCORED; j++) {
        CHECK(picks[j] == want_picks[j], "row %d: the device picks %d, the CPU %d", j, picks[j], want_picks[j]);
        decided += picks[j] >= 0;
    }
    CHECK(decided > 0, "no row decided on the device");
    same_scores(want_scores, scores, N_SCORED, "scores");

    /* 4. the same as a server's group: the leader's passes and cache
     * operations reach the follower, which runs them on its shard */
    td_kv *kl = td_kv_create(e.m, 2, 128, &err);
    CHECK(kl, "%s", err.msg);
    if (check_rank == 0) {
        td_group *grp = td_model_group_lead(e.gcomm, e.gpu, kl, &err);
        CHECK(grp, "%s", err.msg);
        scored_rows(ids, 1, 0, N_SCORED, rows, targets);
        memset(picks, 0xff, sizeof picks);
        memset(scores, 0, sizeof scores);
        CHECK(td_model_forward_out(e.gpu, kl, rows, N_SCORED, NULL, &og, &err) == TD_OK, "led: %s", err.msg);
        for (int32_t j = 0; j < N_SCORED; j++) CHECK(picks[j] == want_picks[j], "led: row %d", j);
        same_scores(want_scores, scores, N_SCORED, "led scores");
        /* roll back half and run it again: the follower's cache follows */
        CHECK(td_kv_truncate(kl, 1, N_SCORED / 2) == TD_OK, "truncate");
        scored_rows(ids, 1, N_SCORED / 2, N_SCORED / 2, rows, targets);
        memset(scores, 0, sizeof scores);
        const td_pass_out half = {.picks = picks, .plans = plans + N_SCORED / 2, .scores = scores,
                                  .targets = targets, .n_alt = 3};
        CHECK(td_model_forward_out(e.gpu, kl, rows, N_SCORED / 2, NULL, &half, &err) == TD_OK, "led: %s", err.msg);
        for (int32_t j = 0; j < N_SCORED / 2; j++)
            CHECK(picks[j] == want_picks[N_SCORED / 2 + j], "led after truncation: row %d", j);
        same_scores(want_scores + N_SCORED / 2, scores, N_SCORED / 2, "led scores after truncation");
        td_model_group_end(grp);
    } else {
        CHECK(td_model_group_follow(e.gcomm, e.gpu, kl, &err) == TD_OK, "following: %s", err.msg);
        CHECK(td_kv_seq_len(kl, 1) == N_SCORED, "the follower's cache holds %d positions", td_kv_seq_len(kl, 1));
    }
    check_invariant(&e, g, ids);
    td_tp_stats st;
    td_ctx_tp_stats(e.gpu, &st);
    CHECK(st.calls > 0 && st.allreduce_bytes > 0 && st.gather_bytes > 0, "the CUDA rank's collectives went uncounted");
    if (check_rank == 0)
        printf("tp_cuda_check: 2 CUDA ranks over %s == 2 CPU ranks bitwise (prefill %d rows, 4 one-row passes, a "
               "tree, %d picks decided of %d, scores); led group ok; invariant order == unsplit; %lld collectives\n",
               td_comm_backend(e.gcomm), N_PROMPT, decided, N_SCORED, (long long)st.calls);
    td_kv_destroy(kl);
    td_kv_destroy(kc);
    td_kv_destroy(kg);
    td_ctx_destroy(e.cpu);
    td_ctx_destroy(e.gpu);
    free(e.lc);
    free(e.lg);
    td_pool_destroy(e.pool);
    td_model_free(e.m);
    td_gguf_close(g);
    if (e.gcomm != e.comm) td_comm_close(e.gcomm);
    td_comm_close(e.comm);
    return 0;
}
