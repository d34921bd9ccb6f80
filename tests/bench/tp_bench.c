/* tp_bench.c — one measurement of a tensor-parallel (or unsplit) engine for
 * tests/bench/tp_bench.py: prefill tok/s (one pass of --prefill tokens of
 * tests/fixtures/english.txt, logits of the last row), decode tok/s
 * (--decode greedy one-row passes after it), what the collectives moved
 * per decoded token and their share of the time, and the largest rank's
 * resident memory and weight bytes. Run as `mpirun -np N td-tp-bench --tp N`
 * or alone with --tp 1. Rank 0 prints one JSON line. Figures only: no
 * pass/fail on time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "model/model.h"
#include "tok/tok.h"

static int die(const char *what, const char *msg) {
    fprintf(stderr, "td-tp-bench: %s: %s\n", what, msg);
    exit(1); /* mpirun ends the other ranks */
}

/* Resident set of this process, MiB (VmRSS). */
static double rss_mib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atof(line + 6);
    if (f) fclose(f);
    return kb / 1024.0;
}

static int32_t argmax(const float *v, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

int main(int argc, char **argv) {
    int tp = 1, threads = 1, n_prefill = 256, n_decode = 64;
    const char *model = NULL, *numerics = "fast";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tp")) tp = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--prefill")) n_prefill = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--decode")) n_decode = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--model")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--numerics")) numerics = argv[i + 1];
        else return die("usage", "--tp N --threads T --prefill P --decode D --model PATH --numerics fast|tp-invariant|reference");
    }
    td_err err = {0};
    td_comm *comm = td_comm_open(tp > 1 ? "mpi" : "single", &err);
    if (!comm) die("comm", err.msg);
    if (td_comm_size(comm) != tp) die("comm", "mpirun -np differs from --tp");
    int rank = td_comm_rank(comm);
    char path[1024];
    if (!model) {
        snprintf(path, sizeof path, "%s/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf", getenv("HOME"));
        model = path;
    }
    td_gguf *g;
    td_model *m;
    td_tok *tok;
    if (td_gguf_open(model, &g, &err) || td_model_load_shard(g, rank, tp, &m, &err) || td_tok_create(g, &tok, &err))
        die(model, err.msg);
    td_pool *pool = td_pool_create(threads, &err);
    if (!pool) die("pool", err.msg);
    td_ctx *c = td_ctx_create(m, n_prefill, pool, &err);
    if (!c) die("context", err.msg);
    td_ctx_set_numerics(c, !strcmp(numerics, "tp-invariant") ? TD_NUMERICS_TP_INVARIANT
                           : !strcmp(numerics, "reference")  ? TD_NUMERICS_REFERENCE
                                                             : TD_NUMERICS_FAST);
    if (td_ctx_set_comm(c, comm, &err)) die("comm", err.msg);
    td_kv *kv = td_kv_create(m, 1, n_prefill + n_decode + 16, &err);
    if (!kv) die("KV cache", err.msg);

    char fpath[1024];
    snprintf(fpath, sizeof fpath, "%s/tests/fixtures/english.txt", TD_SOURCE_DIR);
    FILE *f = fopen(fpath, "rb");
    static char text[1 << 16];
    size_t len = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (td_tok_encode(tok, text, len, false, false, &ids, &n_ids, &err) || n_ids < (size_t)n_prefill)
        die("english.txt", "too few tokens");
    int32_t V = td_model_hparams(m)->n_vocab;
    float *logits = malloc((size_t)V * sizeof(float));
    td_row *rows = malloc((size_t)n_prefill * sizeof *rows);
    if (!logits || !rows) die("memory", "out of memory");

    /* warm-up: touch every weight once, then start over */
    td_row w = td_row_linear(0, 0, ids[0], true);
    if (td_model_forward(c, kv, &w, 1, logits, &err)) die("forward", err.msg);
    td_kv_truncate(kv, 0, 0);

    for (int32_t i = 0; i < n_prefill; i++) rows[i] = td_row_linear(0, i, ids[i], i == n_prefill - 1);
    td_tp_stats s0, s1, s2;
    if (td_comm_barrier(comm, &err)) die("barrier", err.msg);
    td_ctx_tp_stats(c, &s0);
    double t0 = td_now_sec();
    if (td_model_forward(c, kv, rows, n_prefill, logits, &err)) die("forward", err.msg);
    double t1 = td_now_sec();
    td_ctx_tp_stats(c, &s1);
    int32_t next = argmax(logits, V);
    for (int32_t i = 0; i < n_decode; i++) {
        td_row r = td_row_linear(0, n_prefill + i, next, true);
        if (td_model_forward(c, kv, &r, 1, logits, &err)) die("forward", err.msg);
        next = argmax(logits, V);
    }
    double t2 = td_now_sec();
    td_ctx_tp_stats(c, &s2);

    /* the largest rank's memory and the slowest rank's collective time */
    float mine[3] = {(float)rss_mib(), (float)((double)td_model_weight_bytes(m) / 1048576.0),
                     (float)(s2.sec - s1.sec)}, all[3 * 64];
    if (tp > 64) die("tp", "at most 64 ranks");
    if (td_comm_allgather_f32(comm, mine, 3, all, &err)) die("gather", err.msg);
    if (rank == 0) {
        /* time inside collectives includes waiting for a slower rank (the
         * 2 + 1 head split is uneven): the least of the ranks' is closest to
         * the transfers alone, the most to what the pass lost */
        double rss = 0, wmib = 0, comm_dec = 0, comm_min = 1e30;
        for (int r = 0; r < tp; r++) {
            if (all[3 * r] > rss) rss = all[3 * r];
            if (all[3 * r + 1] > wmib) wmib = all[3 * r + 1];
            if (all[3 * r + 2] > comm_dec) comm_dec = all[3 * r + 2];
            if (all[3 * r + 2] < comm_min) comm_min = all[3 * r + 2];
        }
        double dec = t2 - t1, pre = t1 - t0;
        printf("{\"tp\": %d, \"threads\": %d, \"numerics\": \"%s\", \"prefill_tok_s\": %.2f, \"decode_tok_s\": %.2f, "
               "\"decode_allreduce_bytes_per_tok\": %.0f, \"decode_gather_bytes_per_tok\": %.0f, "
               "\"decode_collectives_per_tok\": %.1f, \"decode_comm_share\": %.4f, \"decode_comm_share_min\": %.4f, "
               "\"prefill_comm_bytes_per_tok\": %.0f, \"prefill_comm_share\": %.4f, "
               "\"max_rss_mib\": %.1f, \"max_weight_mib\": %.2f}\n",
               tp, threads, numerics, n_prefill / pre, n_decode / dec,
               (double)(s2.allreduce_bytes - s1.allreduce_bytes) / n_decode,
               (double)(s2.gather_bytes - s1.gather_bytes) / n_decode, (double)(s2.calls - s1.calls) / n_decode,
               comm_dec / dec, comm_min / dec,
               (double)(s1.allreduce_bytes - s0.allreduce_bytes + s1.gather_bytes - s0.gather_bytes) / n_prefill,
               (s1.sec - s0.sec) / pre, rss, wmib);
        fflush(stdout);
    }
    free(rows);
    free(logits);
    free(ids);
    td_kv_destroy(kv);
    td_ctx_destroy(c);
    td_pool_destroy(pool);
    td_tok_destroy(tok);
    td_model_free(m);
    td_gguf_close(g);
    td_comm_close(comm);
    return 0;
}
