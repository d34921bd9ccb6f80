/* cmd_bench.c — `tandem bench engine`: decode and prefill speed, the cost of
 * verifying k rows in one pass, memory bandwidth and the share of it decode
 * reaches. Prints figures (medians of --repeats runs); it passes or fails on
 * nothing. Prompt tokens come from a text file so runs are comparable with
 * tests/bench/llamacpp_bench.py.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"
#include "cuda/cuda.h"
#include "gen/gen.h"
#include "quant/quant.h"

/* Read bandwidth in GB/s over a buffer far larger than the caches. */
static double read_bandwidth(td_pool *pool) {
    size_t bytes = (size_t)512 << 20;
    uint64_t *buf = malloc(bytes);
    if (!buf) return 0;
    for (size_t i = 0; i < bytes / 8; i++) buf[i] = i;
    double bw = td_bench_read_bandwidth(pool, buf, bytes);
    free(buf);
    return bw / 1e9;
}

typedef struct bench_opts {
    int repeats, n_prompt, n_decode, n_prefill;
    const int32_t *ids;
    size_t n_ids;
    td_numerics numerics;
    td_device device;
    td_schedule schedule;
    bool pin, profile, outputs;
} bench_opts;

/* Verification passes measured: 1..16 rows on the CPU, to 32 on a GPU
 * (where rows should be nearly free). */
static const int verify_rows[6] = {1, 2, 4, 8, 16, 32};

/* One verification pass of nk rows right after the prompt, all rows'
 * logits; *secs (may be NULL): the forward pass alone. */
static int verify_pass(td_ctx *ctx, td_kv *kv, const bench_opts *o, int nk, float *logits, double *secs,
                       td_err *err) {
    td_kv_truncate(kv, 0, (int32_t)o->n_prompt);
    td_row rows[32];
    for (int i = 0; i < nk; i++) rows[i] = td_row_linear(0, o->n_prompt + i, o->ids[o->n_prompt + i], true);
    double t0 = td_now_sec();
    int rc = td_model_forward(ctx, kv, rows, nk, logits, err);
    if (secs) *secs = td_now_sec() - t0;
    return rc;
}

/* One line of a pass profile: each step's share of the threads' time
 * (work, then waiting for it to finish), the steps under 0.5 % left out. */
static void print_profile(const char *who, const char *what, const td_pass_profile *pr) {
    double all = pr->wall_s * pr->threads, inside = 0;
    printf("%s: %s, %.3f ms a pass; share of %d threads' time, work (+ waiting for the step):", who, what,
           1e3 * pr->wall_s / (double)(pr->passes > 0 ? pr->passes : 1), pr->threads);
    for (int k = 0; k < TD_PASS_STEPS; k++) {
        inside += pr->work_s[k] + pr->wait_s[k];
        if (pr->work_s[k] + pr->wait_s[k] >= 0.005 * all)
            printf("  %s %.1f%% (+%.1f%%)", td_pass_step_name(k), 100 * pr->work_s[k] / all, 100 * pr->wait_s[k] / all);
    }
    printf("  outside the job %.1f%%\n", 100 * (all - inside) / all);
}

/* The profile of one-row and 8-row passes after the prompt (phases only). */
static int profile_passes(td_ctx *ctx, td_kv *kv, const bench_opts *o, float *logits, const char *who, td_err *err) {
    static const int rows_of[2] = {1, 8};
    for (int w = 0; w < 2; w++) {
        if (td_ctx_set_pass_profile(ctx, true, err)) return 1;
        for (int rep = 0; rep < (w ? 16 : 64); rep++)
            if (verify_pass(ctx, kv, o, rows_of[w], logits, NULL, err)) return 1;
        td_pass_profile pr;
        td_ctx_pass_profile(ctx, &pr);
        print_profile(who, w ? "8-row passes" : "1-row passes", &pr);
    }
    return td_ctx_set_pass_profile(ctx, false, err);
}

/* What a pass brings back, timed: every row's logits; greedy picks; seeded
 * picks (T 0.8, top-k 40, top-p 0.95: a summary a row, its row fetched
 * where undecided); scores with 20 alternatives (the row fetched where
 * they are left to it). On a GPU only the first copies the logits; the
 * others work them out where they are. */
enum { OUT_LOGITS, OUT_ARGMAX, OUT_SAMPLED, OUT_SCORES, OUT_KINDS };
static const char *const out_names[OUT_KINDS] = {"logits", "argmax", "sampled", "scores"};

static int outputs_pass(td_ctx *ctx, td_kv *kv, const bench_opts *o, int nk, int kind, int32_t V, float *logits,
                        double *secs, int *fetched, td_err *err) {
    const bool gpu = o->device.kind == TD_DEVICE_CUDA;
    td_kv_truncate(kv, 0, (int32_t)o->n_prompt);
    td_row rows[32];
    int32_t picks[32], targets[32];
    td_sample_plan plans[32];
    td_sample_score scores[32];
    td_sample_params sp = td_sample_defaults();
    sp.temperature = 0.8f, sp.top_k = 40, sp.top_p = 0.95f, sp.seed = 7;
    for (int i = 0; i < nk; i++) {
        rows[i] = td_row_linear(0, o->n_prompt + i, o->ids[o->n_prompt + i], true);
        targets[i] = o->ids[o->n_prompt + i + 1];
        if (!td_sample_plan_make(&sp, o->n_prompt + i + 1, &plans[i])) return td_err_set(err, TD_E_ARG, "no plan");
    }
    td_pass_out out = {0};
    if (kind == OUT_ARGMAX) out.picks = picks;
    if (kind == OUT_SAMPLED) out.picks = picks, out.plans = plans;
    if (kind == OUT_SCORES) out.scores = scores, out.targets = targets, out.n_alt = TD_SAMPLE_ALT_MAX;
    double t0 = td_now_sec();
    int rc = kind == OUT_LOGITS ? td_model_forward(ctx, kv, rows, nk, logits, err)
                                : td_model_forward_out(ctx, kv, rows, nk, gpu ? NULL : logits, &out, err);
    for (int j = 0; j < nk && rc == TD_OK && gpu; j++) { /* what a caller would fetch */
        bool whole = (kind == OUT_SAMPLED && picks[j] < 0) || (kind == OUT_SCORES && scores[j].n_alt == 0);
        if (whole) rc = td_model_pass_logits(ctx, j, logits + (size_t)j * V, err), ++*fetched;
    }
    *secs = td_now_sec() - t0;
    return rc;
}

/* One line: the median pass of 1 and of 16 rows by what it brings back. */
static int bench_outputs(td_ctx *ctx, td_kv *kv, const bench_opts *o, int32_t V, const char *who, float *logits,
                         td_err *err) {
    static const int rows_of[2] = {1, 16};
    enum { REPS = 16 };
    double t[REPS], med[2][OUT_KINDS];
    int fetched = 0;
    for (int w = 0; w < 2; w++)
        for (int kind = 0; kind < OUT_KINDS; kind++) {
            for (int r = 0; r < REPS; r++)
                if (outputs_pass(ctx, kv, o, rows_of[w], kind, V, logits, &t[r], &fetched, err)) return 1;
            med[w][kind] = td_bench_median(t, REPS);
        }
    printf("%s: one pass by what comes back, ms:", who);
    for (int w = 0; w < 2; w++) {
        printf("  %d row%s:", rows_of[w], w ? "s" : "");
        for (int kind = 0; kind < OUT_KINDS; kind++) printf(" %s %.3f", out_names[kind], med[w][kind] * 1e3);
    }
    printf("  (%d rows fetched whole)\n", fetched);
    return 0;
}

static int bench_threads(td_engine *e, const bench_opts *o, int threads) {
    td_err err = {0};
    td_pool *pool = td_pool_create(threads, &err);
    if (pool && o->pin && td_pool_pin(pool, &err) != TD_OK) {
        fprintf(stderr, "tandem bench: --pin: %s\n", err.msg);
        td_pool_destroy(pool);
        return 1;
    }
    const td_hparams *hp = td_model_hparams(e->model);
    int32_t ctx_len = o->n_prefill + o->n_prompt + o->n_decode + 64;
    td_kv *kv = pool ? td_kv_create(e->model, 1, ctx_len, &err) : NULL;
    bool gpu = o->device.kind == TD_DEVICE_CUDA;
    int n_ks = gpu ? 6 : 5;
    td_ctx *ctx = kv ? td_cli_ctx("bench", e, o->n_prefill > 32 ? o->n_prefill : 32, pool, o->device, o->numerics) : NULL;
    float *logits = malloc((size_t)32 * hp->n_vocab * sizeof(float));
    int rc = 1;
    double *dec = calloc((size_t)o->repeats, sizeof(double)), *pre = calloc((size_t)o->repeats, sizeof(double));
    double *ver[6];
    bool ver_ok = true;
    for (int k = 0; k < 6; k++) ver_ok &= (ver[k] = calloc((size_t)o->repeats * 4, sizeof(double))) != NULL;
    if (!pool || !kv) {
        fprintf(stderr, "tandem bench: %s\n", pool ? err.msg : "cannot start the threads");
        goto out;
    }
    if (!ctx) goto out; /* td_cli_ctx said why */
    td_ctx_set_schedule(ctx, o->schedule);
    if (!logits || !dec || !pre || !ver_ok) {
        fprintf(stderr, "tandem bench: out of memory\n");
        goto out;
    }
    for (int r = 0; r < o->repeats; r++) {
        /* decode: greedy tokens one pass each after a short prompt */
        td_kv_truncate(kv, 0, 0);
        if (td_gen_prefill(ctx, kv, 0, 0, o->ids, (size_t)o->n_prompt, 0, logits, &err)) goto fail;
        int32_t tok = o->ids[o->n_prompt];
        double t0 = td_now_sec();
        for (int i = 0; i < o->n_decode; i++) {
            td_row row = td_row_linear(0, o->n_prompt + i, tok, true);
            if (td_model_forward(ctx, kv, &row, 1, logits, &err)) goto fail;
            int32_t best = 0;
            for (int32_t v = 1; v < hp->n_vocab; v++) if (logits[v] > logits[best]) best = v;
            tok = best;
        }
        dec[r] = o->n_decode / (td_now_sec() - t0);

        /* verification cost: k rows after the prompt, all rows' logits */
        for (int rep = 0; rep < 4; rep++)
            for (int k = 0; k < n_ks; k++)
                if (verify_pass(ctx, kv, o, verify_rows[k], logits, &ver[k][r * 4 + rep], &err)) goto fail;

        /* prefill: one batch of n_prefill rows, logits of the last */
        td_kv_truncate(kv, 0, 0);
        t0 = td_now_sec();
        if (td_gen_prefill(ctx, kv, 0, 0, o->ids, (size_t)o->n_prefill, o->n_prefill, logits, &err)) goto fail;
        pre[r] = o->n_prefill / (td_now_sec() - t0);
    }
    double d = td_bench_median(dec, o->repeats), p = td_bench_median(pre, o->repeats);
    double v1 = td_bench_median(ver[0], o->repeats * 4);
    char who[32];
    if (gpu) td_device_format(o->device, who, sizeof who);
    else snprintf(who, sizeof who, "threads %d%s", threads, o->schedule == TD_SCHEDULE_JOBS ? " (jobs)" : "");
    printf("%s: decode %.1f tok/s (%d after %d), prefill %.1f tok/s (%d rows)\n", who, d, o->n_decode,
           o->n_prompt, p, o->n_prefill);
    printf("%s: verify cost vs 1 row after %d tokens:", who, o->n_prompt);
    for (int k = 0; k < n_ks; k++) printf("  %d rows %.2fx", verify_rows[k], td_bench_median(ver[k], o->repeats * 4) / v1);
    printf("  (1 row = %.3f ms)\n", v1 * 1e3);
    if (gpu) {
        printf("%s: one pass, ms:", who);
        for (int k = 0; k < n_ks; k++) printf("  %d rows %.3f", verify_rows[k], td_bench_median(ver[k], o->repeats * 4) * 1e3);
        printf("\n");
        char prof[512];
        td_ctx_profile(ctx, prof, sizeof prof);
        printf("%s: %s\n", who, prof); /* the kernel profile, or how kernels were launched */
        if (o->outputs && bench_outputs(ctx, kv, o, hp->n_vocab, who, logits, &err)) goto fail;
        rc = 0;
        goto out;
    }
    double bw = read_bandwidth(pool);
    double per_tok = (double)td_model_weight_bytes(e->model);
    printf("%s: read bandwidth %.1f GB/s; weights %.1f MB/token -> limit %.1f tok/s; decode at %.0f%% of it\n",
           who, bw, per_tok / 1e6, bw * 1e9 / per_tok, 100.0 * d / (bw * 1e9 / per_tok));
    if (o->schedule == TD_SCHEDULE_PHASES) {
        td_ctx_plan plan;
        td_ctx_plan_report(ctx, &plan);
        printf("%s: matmul bytes on the busiest thread %.2fx an even share (planned chunks; one slice per thread: "
               "%.2fx)\n", who, plan.busiest, plan.one_slice_busiest);
        if (o->profile && profile_passes(ctx, kv, o, logits, who, &err)) goto fail;
    }
    if (o->outputs && bench_outputs(ctx, kv, o, hp->n_vocab, who, logits, &err)) goto fail;
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "tandem bench: %s\n", err.msg);
out:
    for (int k = 0; k < 6; k++) free(ver[k]);
    free(dec);
    free(pre);
    free(logits);
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
    td_pool_destroy(pool);
    return rc;
}

static int bench_engine(int argc, char **argv) {
    const char *cmd = "bench engine";
    char buf[1024];
    const char *model = td_cli_default_model(buf, sizeof buf), *text_file = "tests/fixtures/english.txt";
    const char *threads_list = "1,2";
    long repeats = 5, context = 64;
    td_numerics numerics = TD_NUMERICS_FAST;
    bool numerics_given = false;
    td_device device = {TD_DEVICE_CPU, 0};
    const char *schedule = "phases";
    bool pin = false, profile = false, outputs = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            puts("usage: tandem bench engine [--model PATH] [--text FILE] [--threads LIST] [--repeats N]\n"
                 "                           [--context N] [--numerics fast|reference|llamacpp]\n"
                 "                           [--device cpu|cuda[:N]] [--schedule phases|jobs|both] [--pin]\n"
                 "                           [--profile] [--outputs]\n\n"
                 "Decode tok/s (128 tokens after an N-token prompt), prefill tok/s (512-token batch),\n"
                 "verification cost of 1,2,4,8,16 rows after the N-token prompt relative to 1 row,\n"
                 "read bandwidth and the decode speed as a share of the bandwidth limit. Prompt\n"
                 "tokens come from --text (default tests/fixtures/english.txt). Medians of --repeats\n"
                 "runs (default 5). --threads is a comma list (default 1,2); --context N sets the\n"
                 "prompt before decode and verification (default 64; longer ones weigh attention).\n"
                 "With --device cuda: one run on the GPU (--threads ignored), passes of up to 32 rows,\n"
                 "and each pass's time in ms. --schedule: how a CPU pass goes to the threads, as one\n"
                 "job of phases (the default) or one job per matmul (what split models take); both\n"
                 "runs each thread count with jobs, then phases, for a side-by-side figure. --pin\n"
                 "pins each worker thread to its own CPU (refused with fewer CPUs than threads).\n"
                 "With phases, each thread count also prints how evenly the planned matmul chunks\n"
                 "share a pass's weight bytes among the threads (a figure of shapes, the same on\n"
                 "any machine: worth reading before timing many threads). --profile adds where\n"
                 "the threads' time goes in 1-row and 8-row passes: per step of a layer (summed\n"
                 "over the layers) the share spent on its work and waiting for it to finish, and\n"
                 "the share outside the pass's job (clock reads make these passes a little slower).\n"
                 "--outputs adds the median pass of 1 and of 16 rows by what it brings back: every\n"
                 "row's logits, greedy picks, seeded picks (T 0.8, top-k 40, top-p 0.95) and scores\n"
                 "with 20 alternatives. On a GPU the last three are worked out where the logits are\n"
                 "and only they cross to the host (a row is fetched whole where they leave it to it);\n"
                 "on the CPU they are worked out from the logits (seeded picks there by the definition\n"
                 "the GPU follows, which sorts the whole row: not what a CPU caller does).\n\n"
                 TD_CLI_NUMERICS_HELP TD_CLI_DEVICE_HELP);
            return 0;
        }
        if (!strcmp(a, "--model")) { if (!(model = td_cli_value(cmd, argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--text")) { if (!(text_file = td_cli_value(cmd, argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--threads")) { if (!(threads_list = td_cli_value(cmd, argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--numerics")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_numerics(cmd, v, &numerics)) return 2; numerics_given = true; }
        else if (!strcmp(a, "--device")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_device(cmd, v, &device)) return 2; }
        else if (!strcmp(a, "--context")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 1, 4096, &context)) return 2; }
        else if (!strcmp(a, "--pin")) pin = true;
        else if (!strcmp(a, "--profile")) profile = true;
        else if (!strcmp(a, "--outputs")) outputs = true;
        else if (!strcmp(a, "--schedule")) {
            if (!(schedule = td_cli_value(cmd, argc, argv, &i))) return 2;
            if (strcmp(schedule, "phases") && strcmp(schedule, "jobs") && strcmp(schedule, "both")) {
                fprintf(stderr, "tandem bench engine: --schedule '%s': phases, jobs or both\n", schedule);
                return 2;
            }
        }
        else if (!strcmp(a, "--repeats")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 1, 1000, &repeats)) return 2; }
        else { fprintf(stderr, "tandem bench engine: unknown option '%s'\n", a); return 2; }
    }
    if (!td_cli_device_numerics(cmd, device, numerics_given, &numerics)) return 2;
    if (device.kind == TD_DEVICE_CUDA) threads_list = "1";
    size_t len;
    char *text = td_cli_read_file(cmd, text_file, &len);
    if (!text) return 1;
    td_engine e;
    if (td_cli_engine_open(&e, model, 1)) { free(text); return 1; }
    int status = 1;
    int32_t *ids = NULL;
    size_t n = 0;
    td_err err = {0};
    if (td_tok_encode(e.tok, text, len, td_tok_add_bos(e.tok), false, &ids, &n, &err)) {
        fprintf(stderr, "tandem bench: %s\n", err.msg);
        goto out;
    }
    bench_opts o = {(int)repeats, (int)context, 128, 512, ids, n, numerics, device,
                    strcmp(schedule, "jobs") ? TD_SCHEDULE_PHASES : TD_SCHEDULE_JOBS, pin, profile, outputs};
    size_t need = (size_t)(context + 32 > 600 ? context + 32 : 600);
    if (n < need) { fprintf(stderr, "tandem bench: --text needs at least %zu tokens, has %zu\n", need, n); goto out; }
    char kernels[160];
    snprintf(kernels, sizeof kernels, "%s%s", td_quant_kernel_name(),
             td_quant_uses_amx() ? " (AMX tiles for passes of 6 rows or more)" : "");
    if (device.kind == TD_DEVICE_CUDA && td_cuda_device_name(td_device_resolve(device).index, kernels, sizeof kernels, &err) != TD_OK)
        snprintf(kernels, sizeof kernels, "cuda (%.100s)", err.msg);
    printf("model %s, kernels %s, %s numerics, %d repeats (medians)\n", model, kernels, td_numerics_name(o.numerics), o.repeats);
    status = 0;
    for (const char *p = threads_list; *p;) {
        char *end;
        long t = strtol(p, &end, 10);
        if (end == p || t < 1 || t > 256) { fprintf(stderr, "tandem bench: bad --threads list '%s'\n", threads_list); status = 2; break; }
        if (!strcmp(schedule, "both")) {
            bench_opts jobs = o;
            jobs.schedule = TD_SCHEDULE_JOBS;
            if (bench_threads(&e, &jobs, (int)t)) { status = 1; break; }
        }
        if (bench_threads(&e, &o, (int)t)) { status = 1; break; }
        p = *end == ',' ? end + 1 : end;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak RSS %.1f MiB\n", ru.ru_maxrss / 1024.0);
out:
    free(ids);
    free(text);
    td_cli_engine_close(&e);
    return status;
}

int td_cmd_bench(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "engine")) return bench_engine(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "spec")) return td_cmd_bench_spec(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "kernels")) return td_cmd_bench_kernels(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        puts("usage: tandem bench engine [OPTIONS]   decode, prefill, verification cost, bandwidth\n"
             "       tandem bench spec --prompts F   speculative decoding vs plain, per task group\n"
             "       tandem bench kernels [OPTIONS]  matmul kernels against the CPU's peak and bandwidth\n"
             "(see --help of each)");
        return 0;
    }
    fprintf(stderr, "usage: tandem bench engine|spec|kernels [OPTIONS]\n");
    return 2;
}
