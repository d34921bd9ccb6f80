/* cmd_generate.c — `tandem generate`: streams generated text (and only that)
 * to stdout; one summary line on stderr so outputs compare byte for byte.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "drafters.h"
#include "gen/gen.h"
#include "quant/quant.h"

#define MAX_STOPS 16

static void usage(FILE *f) {
    fputs("usage: tandem generate [--model PATH] (--prompt TEXT | --prompt-file PATH) [OPTIONS]\n"
          "\n"
          "  --model PATH          GGUF model (default: the set-up script's SmolLM2-135M-Instruct)\n"
          "  --prompt TEXT         prompt text (UTF-8)\n"
          "  --prompt-file PATH    read the prompt from a file\n"
          "  --chat                wrap the prompt as a user turn in the model's chat template\n"
          "  --system TEXT         system message for --chat (default: the template's own)\n"
          "  --max-tokens N        tokens to generate at most (default 128)\n"
          "  --temperature T       0 = greedy (default 0)\n"
          "  --top-k K             keep the K most likely tokens (default 0 = off)\n"
          "  --top-p P             nucleus sampling threshold (default 1 = off)\n"
          "  --min-p P             drop tokens below P x the top probability (default 0 = off)\n"
          "  --repeat-penalty R    penalise tokens of the last --repeat-last-n (default 1 = off)\n"
          "  --repeat-last-n N     penalty window (default 64)\n"
          "  --seed S              sampling seed, 0 to 2^64-1 (default 0); same seed, same output\n"
          "  --stop TEXT           stop before this text (repeatable, up to 16)\n"
          "  --ignore-eos          keep generating past end-of-turn tokens\n"
          "  --ctx N               context length in tokens (default min(model, 4096))\n"
          "  --threads N           worker threads (default: all cores)\n"
          "  --tp N                tensor parallelism: run as N processes, each holding 1/N of\n"
          "                        the model (mpirun -np N tandem generate --tp N ...); rank 0\n"
          "                        prints. With --numerics tp-invariant the output is the same\n"
          "                        for every N\n"
          TD_CLI_TP_COMM_HELP
          TD_CLI_NUMERICS_HELP
          TD_CLI_DEVICE_HELP
          "  --no-special          do not parse special-token text in the prompt\n"
          "\n"
          "Speculative decoding (output is token-identical to --draft none):\n"
          "  --draft LIST          none (default), lookup, ngram, recycle, layerskip[:A-B],\n"
          "                        model:PATH, auto (= lookup,recycle,ngram); comma-separated\n"
          "                        drafters are merged into one token tree per step\n"
          "  --draft-max K         draft tokens per step at most (default 8, max 64); each\n"
          "                        step verifies only the drafted tokens whose learned\n"
          "                        acceptance pays for their rows at this machine's speed\n"
          "  --draft-min K         adaptive lower bound (default 1)\n"
          "  --draft-fixed         always draft and verify --draft-max (no adaptation)\n"
          "  --row-cost C          plan as if each extra verified row cost C of a one-row\n"
          "                        pass (default: learned from this machine's timings;\n"
          "                        e.g. 0.02 to draft as a GPU verifier would)\n"
          "  --draft-mode MODE     exact (default) or rejection (classic p/q test: same\n"
          "                        distribution, not the same tokens)\n"
          "\n"
          "Through a tandem cluster (the output is the same as local generation):\n"
          "  --server ADDR         send the request to a coordinator (host:port) instead of\n"
          "                        loading the model here; --draft names the cluster's drafters\n"
          "                        (model = its drafter workers, layerskip = the verifiers')\n"
          "  --logprobs N          also print each token's logprob to stderr (with --server)\n"
          "  --deadline-ms MS      give up after MS milliseconds (with --server)\n"
          "  --request-id ID       id that appears in the cluster's logs (with --server)\n"
          "  --tls-ca FILE         TLS to the server, its certificate checked against this CA\n"
          "                        (PEM; with --server)\n"
          "  --token-file FILE     bearer token (first line) for a server that wants one (with\n"
          "                        --server); default $TANDEM_TOKEN\n",
          f);
}

static int write_stdout(void *user, const char *text, size_t len) {
    if (user) return 0; /* a tensor-parallel rank other than 0: rank 0 prints */
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

int td_cmd_generate(int argc, char **argv) {
    const char *cmd = "generate";
    char model_buf[1024];
    const char *model = td_cli_default_model(model_buf, sizeof model_buf);
    const char *prompt = NULL, *prompt_file = NULL, *system = NULL;
    const char *stops[MAX_STOPS];
    size_t n_stop = 0;
    bool chat = false, parse_special = true;
    long max_tokens = 128, threads = 0, ctx_len = 0, tp = 1;
    const char *tp_comm_arg = "mpi", *tp_comm = "mpi";
    td_numerics numerics = TD_NUMERICS_FAST;
    bool numerics_given = false;
    td_device device = {TD_DEVICE_CPU, 0};
    td_gen_params gp = {.sample = td_sample_defaults()};
    const char *draft = "none";
    td_spec_params spp = td_spec_defaults();
    const char *server = NULL, *request_id = NULL, *tls_ca = NULL, *token_file = NULL;
    long logprobs = 0, deadline_ms = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        long l;
        double d;
#define VAL() do { if (!(v = td_cli_value(cmd, argc, argv, &i))) return 2; } while (0)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--model")) { VAL(); model = v; }
        else if (!strcmp(a, "--prompt")) { VAL(); prompt = v; }
        else if (!strcmp(a, "--prompt-file")) { VAL(); prompt_file = v; }
        else if (!strcmp(a, "--system")) { VAL(); system = v; }
        else if (!strcmp(a, "--chat")) chat = true;
        else if (!strcmp(a, "--no-special")) parse_special = false;
        else if (!strcmp(a, "--ignore-eos")) gp.ignore_eos = true;
        else if (!strcmp(a, "--max-tokens")) { VAL(); if (!td_cli_int(cmd, a, v, 0, 1 << 20, &max_tokens)) return 2; }
        else if (!strcmp(a, "--threads")) { VAL(); if (!td_cli_int(cmd, a, v, 1, 256, &threads)) return 2; }
        else if (!strcmp(a, "--tp")) { VAL(); if (!td_cli_int(cmd, a, v, 1, 64, &tp)) return 2; }
        else if (!strcmp(a, "--tp-comm")) { VAL(); tp_comm_arg = v; }
        else if (!strcmp(a, "--numerics")) { VAL(); if (!td_cli_numerics(cmd, v, &numerics)) return 2; numerics_given = true; }
        else if (!strcmp(a, "--device")) { VAL(); if (!td_cli_device(cmd, v, &device)) return 2; }
        else if (!strcmp(a, "--ctx")) { VAL(); if (!td_cli_int(cmd, a, v, 16, 1 << 20, &ctx_len)) return 2; }
        else if (!strcmp(a, "--temperature")) { VAL(); if (!td_cli_float(cmd, a, v, 0, 100, &d)) return 2; gp.sample.temperature = (float)d; }
        else if (!strcmp(a, "--top-k")) { VAL(); if (!td_cli_int(cmd, a, v, 0, 1 << 24, &l)) return 2; gp.sample.top_k = (int32_t)l; }
        else if (!strcmp(a, "--top-p")) { VAL(); if (!td_cli_float(cmd, a, v, 1e-6, 1, &d)) return 2; gp.sample.top_p = (float)d; }
        else if (!strcmp(a, "--min-p")) { VAL(); if (!td_cli_float(cmd, a, v, 0, 1, &d)) return 2; gp.sample.min_p = (float)d; }
        else if (!strcmp(a, "--repeat-penalty")) { VAL(); if (!td_cli_float(cmd, a, v, 1e-3, 100, &d)) return 2; gp.sample.repeat_penalty = (float)d; }
        else if (!strcmp(a, "--repeat-last-n")) { VAL(); if (!td_cli_int(cmd, a, v, 0, 1 << 20, &l)) return 2; gp.sample.repeat_last_n = (int32_t)l; }
        else if (!strcmp(a, "--seed")) { VAL(); if (!td_cli_u64(cmd, a, v, &gp.sample.seed)) return 2; }
        else if (!strcmp(a, "--stop")) { VAL(); if (n_stop == MAX_STOPS || !*v) { fprintf(stderr, "tandem generate: --stop: at most %d non-empty strings\n", MAX_STOPS); return 2; } stops[n_stop++] = v; }
        else if (!strcmp(a, "--draft")) {
            VAL();
            /* "" would run the speculative path with no drafter at all */
            if (!*v) { fprintf(stderr, "tandem generate: --draft needs a drafter name (none, lookup, ngram, recycle, layerskip[:A-B], model:PATH, auto)\n"); return 2; }
            draft = v;
        }
        else if (!strcmp(a, "--draft-max")) { VAL(); if (!td_cli_int(cmd, a, v, 1, TD_DRAFT_MAX, &l)) return 2; spp.draft_max = (int32_t)l; }
        else if (!strcmp(a, "--draft-min")) { VAL(); if (!td_cli_int(cmd, a, v, 1, TD_DRAFT_MAX, &l)) return 2; spp.draft_min = (int32_t)l; }
        else if (!strcmp(a, "--draft-fixed")) spp.adaptive = false;
        else if (!strcmp(a, "--server")) { VAL(); server = v; }
        else if (!strcmp(a, "--tls-ca")) { VAL(); tls_ca = v; }
        else if (!strcmp(a, "--token-file")) { VAL(); token_file = v; }
        else if (!strcmp(a, "--request-id")) { VAL(); request_id = v; }
        else if (!strcmp(a, "--logprobs")) { VAL(); if (!td_cli_int(cmd, a, v, 0, 20, &logprobs)) return 2; }
        else if (!strcmp(a, "--deadline-ms")) { VAL(); if (!td_cli_int(cmd, a, v, 1, 1L << 40, &deadline_ms)) return 2; }
        else if (!strcmp(a, "--row-cost")) { VAL(); if (!td_cli_float(cmd, a, v, 1e-4, 10, &d)) return 2; spp.row_cost = (float)d; }
        else if (!strcmp(a, "--draft-mode")) {
            VAL();
            if (!strcmp(v, "exact")) spp.mode = TD_SPEC_EXACT;
            else if (!strcmp(v, "rejection")) spp.mode = TD_SPEC_REJECTION;
            else { fprintf(stderr, "tandem generate: --draft-mode is exact or rejection\n"); return 2; }
        }
        else { fprintf(stderr, "tandem generate: unknown option '%s'\n", a); usage(stderr); return 2; }
#undef VAL
    }
    if (spp.draft_min > spp.draft_max) spp.draft_min = spp.draft_max;
    if (!prompt == !prompt_file) {
        fprintf(stderr, "tandem generate: give exactly one of --prompt or --prompt-file\n");
        return 2;
    }
    if (!td_cli_device_numerics(cmd, device, numerics_given, &numerics)) return 2;
    if (!td_cli_tp_comm(cmd, tp_comm_arg, device, &tp_comm)) return 2;
    if (strcmp(draft, "none") != 0 && !td_cli_numerics_allow_speculation(cmd, numerics)) return 2;
    char *file_text = NULL;
    size_t prompt_len = prompt ? strlen(prompt) : 0;
    if (prompt_file) {
        if (!(prompt = file_text = td_cli_read_file(cmd, prompt_file, &prompt_len))) return 1;
        /* the prompt is a C string from here on: a NUL would silently cut it */
        const char *nul = memchr(file_text, 0, prompt_len);
        if (nul) {
            fprintf(stderr, "tandem generate: %s: NUL byte at byte offset %zu (prompts are UTF-8 text)\n",
                    prompt_file, (size_t)(nul - file_text));
            free(file_text);
            return 1;
        }
    }

    if (server) {
        td_cli_remote_gen rg = {.server = server, .prompt = prompt, .system = system, .chat = chat,
                                .parse_special = parse_special, .ignore_eos = gp.ignore_eos,
                                .max_tokens = (int32_t)max_tokens, .sample = gp.sample, .stop = stops, .n_stop = n_stop,
                                .draft = draft, .draft_max = spp.draft_max, .draft_min = spp.draft_min,
                                .draft_fixed = !spp.adaptive, .logprobs = (int32_t)logprobs, .deadline_ms = deadline_ms,
                                .request_id = request_id, .tls_ca = tls_ca, .token_file = token_file};
        int rc = td_cli_remote_generate(&rg);
        free(file_text);
        return rc;
    }
    if (tp > 1 && strcmp(draft, "none") != 0) {
        if (strstr(draft, "layerskip")) {
            fprintf(stderr, "tandem generate: --draft layerskip runs the target's own layers: not with --tp\n");
            free(file_text);
            return 2;
        }
        /* every rank plans the same drafts only if no rank learns the
         * cost of a row from its own wall clock */
        if (!(spp.row_cost > 0)) spp.row_cost = 0.1f;
    }
    td_engine e;
    if (td_cli_engine_open_tp(&e, model, (int)threads, (int)tp, tp_comm)) { free(file_text); return 1; }
    /* rank 0 prints; the others compute their shard of the same passes */
    bool quiet = td_comm_rank(e.comm) != 0;
    void *emit_user = quiet ? &e : NULL;
    int status = 1;
    char *formatted = NULL;
    int32_t *ids = NULL;
    td_kv *kv = NULL;
    td_ctx *ctx = NULL;
    td_err err = {0};
    const td_hparams *hp = td_model_hparams(e.model);

    const char *text = prompt;
    if (chat) {
        td_chat_msg msgs[2];
        size_t n = 0;
        if (system) msgs[n++] = (td_chat_msg){"system", system};
        msgs[n++] = (td_chat_msg){"user", prompt};
        if (td_tok_chat_format(e.tok, msgs, n, true, &formatted, &err)) {
            fprintf(stderr, "tandem generate: chat template: %s\n", err.msg);
            goto out;
        }
        text = formatted;
    }
    size_t n_ids = 0;
    if (td_tok_encode(e.tok, text, chat ? strlen(text) : prompt_len, td_tok_add_bos(e.tok), parse_special, &ids, &n_ids, &err)) {
        fprintf(stderr, "tandem generate: prompt: %s\n", err.msg);
        goto out;
    }
    if (n_ids == 0) {
        fprintf(stderr, "tandem generate: the prompt encodes to no tokens\n");
        goto out;
    }
    bool ctx_given = ctx_len != 0;
    if (!ctx_given) ctx_len = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    if ((long)n_ids + 1 > ctx_len) {
        if (ctx_given)
            fprintf(stderr, "tandem generate: prompt of %zu tokens does not fit --ctx %ld\n", n_ids, ctx_len);
        else
            fprintf(stderr, "tandem generate: prompt of %zu tokens does not fit the default context of %ld tokens "
                    "(the model's context_length is %d; pass --ctx N)\n", n_ids, ctx_len, hp->n_ctx_train);
        goto out;
    }
    gp.max_tokens = (int32_t)max_tokens;
    gp.stop = stops;
    gp.n_stop = n_stop;
    bool speculate = strcmp(draft, "none") != 0;
    if (!(kv = td_kv_create(e.model, 2, (int32_t)ctx_len, &err))) {
        fprintf(stderr, "tandem generate: %s\n", err.msg);
        goto out;
    }
    if (!(ctx = td_cli_ctx(cmd, &e, 512, e.pool, device, numerics))) goto out;
    if (!speculate) {
        td_gen_stats st;
        if (td_gen_run(e.model, e.tok, ctx, kv, 0, ids, n_ids, &gp, write_stdout, emit_user, NULL, &st, &err)) {
            fprintf(stderr, "\ntandem generate: %s\n", err.msg);
            goto out;
        }
        if (!quiet)
        fprintf(stderr,
                "\n[tandem] prompt %d tokens, generated %d tokens, prefill %.1f tok/s, decode %.1f tok/s, "
                "stop: %s, threads %d, kernels %s%s\n",
                st.n_prompt, st.n_generated, st.prefill_sec > 0 ? st.n_prefilled / st.prefill_sec : 0.0,
                st.decode_sec > 0 ? st.n_forward / st.decode_sec : 0.0, td_gen_stop_name(st.stop), e.n_threads,
                device.kind == TD_DEVICE_CUDA ? "cuda" : td_quant_kernel_name(), tp > 1 ? ", tensor parallel" : "");
    } else {
        td_drafter_set ds;
        if (td_cli_drafters_open(&ds, draft, &e, &gp.sample, 1, (int32_t)ctx_len, TD_DRAFTER_PER_REQUEST)) goto out;
        td_spec_request rq = {.prompt = ids, .n_prompt = n_ids, .gen = gp, .emit = write_stdout, .user = emit_user};
        int rc = td_spec_run(e.model, e.tok, ctx, kv, &rq, 1, ds.d, ds.n, &spp, &err);
        td_cli_drafters_close(&ds);
        if (rc) {
            fprintf(stderr, "\ntandem generate: %s\n", err.msg);
            goto out;
        }
        /* Estimated plain decoding cost: one-row passes at the middle of the
         * generated span (the average context plain decoding would attend
         * over), median of five; the finished sequence's cache is reused. */
        float *lg = malloc((size_t)hp->n_vocab * sizeof(float));
        double t_one = 0;
        int32_t mid = (int32_t)n_ids + rq.stats.n_generated / 2;
        if (mid >= td_kv_seq_len(kv, 0)) mid = td_kv_seq_len(kv, 0) - 1;
        if (lg && mid > 0) {
            double t[5];
            int ok = 0;
            for (int i = 0; i < 5; i++, ok++) {
                if (td_kv_truncate(kv, 0, mid)) break;
                td_row r = td_row_linear(0, mid, ids[(size_t)i % n_ids], true);
                double t0 = td_now_sec();
                if (td_model_forward(ctx, kv, &r, 1, lg, &err)) break;
                t[i] = td_now_sec() - t0;
            }
            for (int i = 1; i < ok; i++) /* insertion sort: five samples */
                for (int j = i; j > 0 && t[j] < t[j - 1]; j--) { double x = t[j]; t[j] = t[j - 1]; t[j - 1] = x; }
            t_one = ok > 0 ? t[ok / 2] : 0;
        }
        free(lg);
        const td_gen_stats *st = &rq.stats;
        const td_spec_stats *sx = &rq.spec;
        double per_pass = sx->n_steps ? (double)sx->n_tokens / sx->n_steps : 0;
        double plain_est = t_one * st->n_generated;
        if (!quiet)
        fprintf(stderr,
                "\n[tandem] prompt %d tokens, generated %d tokens, prefill %.1f tok/s, decode %.1f tok/s, "
                "stop: %s, threads %d, kernels %s\n"
                "[tandem] speculation (%s, %s): %lld target passes, %.2f tokens/pass, acceptance %.1f%% "
                "(%lld of %lld drafted), speedup vs plain decoding ~%.2fx (estimated)\n",
                st->n_prompt, st->n_generated, st->prefill_sec > 0 ? st->n_prefilled / st->prefill_sec : 0.0,
                st->decode_sec > 0 ? st->n_generated / st->decode_sec : 0.0, td_gen_stop_name(st->stop),
                e.n_threads, device.kind == TD_DEVICE_CUDA ? "cuda" : td_quant_kernel_name(), draft, spp.mode == TD_SPEC_EXACT ? "exact" : "rejection",
                (long long)sx->n_steps, per_pass, sx->n_drafted ? 100.0 * sx->n_accepted / sx->n_drafted : 0.0,
                (long long)sx->n_accepted, (long long)sx->n_drafted,
                st->decode_sec > 0 ? plain_est / st->decode_sec : 0.0);
    }
    status = 0;
out:
    td_ctx_destroy(ctx);
    td_kv_destroy(kv);
    free(ids);
    free(formatted);
    free(file_text);
    td_cli_engine_close(&e);
    return status;
}
