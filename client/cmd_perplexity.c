/* cmd_perplexity.c — `tandem perplexity`: teacher-forced scoring of a text
 * through the all-rows logits path (the path batch scoring will use).
 * Windows of --ctx tokens are scored independently; every position after a
 * window's first token counts.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gen/gen.h"

int td_cmd_perplexity(int argc, char **argv) {
    const char *cmd = "perplexity";
    char buf[1024];
    const char *model = td_cli_default_model(buf, sizeof buf), *file = NULL;
    long ctx_len = 512, threads = 0, batch = 512, max_tokens = 0, tp = 1;
    const char *tp_comm_arg = "mpi", *tp_comm = "mpi";
    bool per_token = false;
    td_numerics numerics = TD_NUMERICS_FAST;
    bool numerics_given = false;
    td_device device = {TD_DEVICE_CPU, 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            puts("usage: tandem perplexity [--model PATH] --file TEXT [--ctx N] [--batch N] [--max-tokens N] [--threads N]\n"
                 "                        [--per-token] [--tp N] [--tp-comm mpi|nccl]\n"
                 "                        [--numerics fast|reference|llamacpp|tp-invariant] [--device cpu|cuda[:N]]\n\n"
                 "Scores the file's tokens: each window of --ctx tokens (default 512) is evaluated\n"
                 "with logits for every row, in batches of --batch rows (default 512).\n"
                 "Prints the perplexity exp(mean negative log-likelihood) and the token count.\n"
                 "--per-token also prints each scored token: its id and log-probability (%.9g of\n"
                 "a float, as tandem.v1.Inference/Score returns it), one per line.\n"
                 "--tp N scores over a tensor-parallel group of N processes, each holding 1/N\n"
                 "of the model (mpirun -np N tandem perplexity --tp N ...); rank 0 prints.\n\n"
                 TD_CLI_TP_COMM_HELP
                 TD_CLI_NUMERICS_HELP TD_CLI_DEVICE_HELP);
            return 0;
        }
        if (!strcmp(a, "--model")) { if (!(model = td_cli_value(cmd, argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--per-token")) per_token = true;
        else if (!strcmp(a, "--file")) { if (!(file = td_cli_value(cmd, argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--ctx")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 2, 1 << 20, &ctx_len)) return 2; }
        else if (!strcmp(a, "--batch")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 1, 4096, &batch)) return 2; }
        else if (!strcmp(a, "--max-tokens")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 0, 1L << 30, &max_tokens)) return 2; }
        else if (!strcmp(a, "--tp-comm")) { if (!(tp_comm_arg = td_cli_value(cmd, argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--tp")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 1, 64, &tp)) return 2; }
        else if (!strcmp(a, "--threads")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 1, 256, &threads)) return 2; }
        else if (!strcmp(a, "--numerics")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_numerics(cmd, v, &numerics)) return 2; numerics_given = true; }
        else if (!strcmp(a, "--device")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_device(cmd, v, &device)) return 2; }
        else { fprintf(stderr, "tandem perplexity: unknown option '%s'\n", a); return 2; }
    }
    if (!file) { fprintf(stderr, "tandem perplexity: --file is required\n"); return 2; }
    if (!td_cli_device_numerics(cmd, device, numerics_given, &numerics)) return 2;
    if (!td_cli_tp_comm(cmd, tp_comm_arg, device, &tp_comm)) return 2;
    size_t len;
    char *text = td_cli_read_file(cmd, file, &len);
    if (!text) return 1;
    td_engine e;
    if (td_cli_engine_open_tp(&e, model, (int)threads, (int)tp, tp_comm)) { free(text); return 1; }
    const bool quiet = td_comm_rank(e.comm) != 0; /* rank 0 prints; the others compute their shard */
    int status = 1;
    int32_t *ids = NULL;
    size_t n = 0;
    td_err err = {0};
    td_kv *kv = NULL;
    td_ctx *ctx = NULL;
    float *logits = NULL;
    td_row *rows = NULL;
    int32_t *targets = NULL;
    td_sample_score *scores = NULL;
    int32_t V = td_model_hparams(e.model)->n_vocab;
    if (td_tok_encode(e.tok, text, len, td_tok_add_bos(e.tok), false, &ids, &n, &err)) {
        fprintf(stderr, "tandem perplexity: %s\n", err.msg);
        goto out;
    }
    if (max_tokens > 0 && (size_t)max_tokens < n) n = (size_t)max_tokens;
    if (n < 2) { fprintf(stderr, "tandem perplexity: the text has fewer than 2 tokens\n"); goto out; }
    if (!(kv = td_kv_create(e.model, 1, (int32_t)ctx_len, &err))) {
        fprintf(stderr, "tandem perplexity: %s\n", err.msg);
        goto out;
    }
    if (!(ctx = td_cli_ctx(cmd, &e, (int32_t)batch, e.pool, device, numerics))) goto out;
    /* on a GPU each row's score is computed where its logits are, and only
     * the score crosses (sample.h, "scoring where the logits are") */
    const bool on_device = device.kind == TD_DEVICE_CUDA;
    if (!on_device) logits = malloc((size_t)batch * V * sizeof *logits);
    rows = malloc((size_t)batch * sizeof *rows);
    targets = malloc((size_t)batch * sizeof *targets);
    scores = malloc((size_t)batch * sizeof *scores);
    if (!kv || !ctx || (!on_device && !logits) || !rows || !targets || !scores) { fprintf(stderr, "tandem perplexity: out of memory\n"); goto out; }
    double nll = 0;
    size_t scored = 0;
    double t0 = td_now_sec();
    for (size_t w0 = 0; w0 + 1 < n; w0 += (size_t)ctx_len) {
        size_t wn = n - w0 < (size_t)ctx_len ? n - w0 : (size_t)ctx_len;
        td_kv_truncate(kv, 0, 0);
        for (size_t b0 = 0; b0 < wn; b0 += (size_t)batch) {
            int32_t k = (int32_t)(wn - b0 < (size_t)batch ? wn - b0 : (size_t)batch);
            for (int32_t i = 0; i < k; i++) {
                rows[i] = td_row_linear(0, (int32_t)(b0 + i), ids[w0 + b0 + i], true);
                targets[i] = b0 + (size_t)i + 1 < wn ? ids[w0 + b0 + i + 1] : -1;
            }
            if (td_model_forward_scores(ctx, kv, rows, k, targets, 0, logits, scores, &err)) {
                fprintf(stderr, "tandem perplexity: %s\n", err.msg);
                goto out;
            }
            for (int32_t i = 0; i < k; i++) {
                if (targets[i] < 0) break;
                double lp = td_sample_logprob_of(scores[i].logit, scores[i].max, log(scores[i].sum));
                nll -= lp;
                if (per_token && !quiet) printf("%d\t%.9g\n", targets[i], (double)(float)lp);
                scored++;
            }
        }
    }
    double dt = td_now_sec() - t0;
    if (!quiet) {
        printf("perplexity %.4f over %zu scored tokens (%zu tokens, windows of %ld)\n", exp(nll / scored), scored, n,
               ctx_len);
        fprintf(stderr, "[tandem] %.1f tokens/s scored, threads %d%s\n", n / dt, e.n_threads,
                tp > 1 ? ", tensor parallel" : "");
    }
    status = 0;
out:
    free(scores);
    free(targets);
    free(rows);
    free(logits);
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
    free(ids);
    free(text);
    td_cli_engine_close(&e);
    return status;
}
