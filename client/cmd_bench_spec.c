/* cmd_bench_spec.c — `tandem bench spec`: runs Spec-Bench-style questions
 * (JSON lines with "category" and "turns") with plain decoding and with each
 * drafter configuration, side by side per question, checks the tokens are
 * identical, and prints per-group and overall speedup, tokens per target
 * pass and acceptance. Multi-turn questions answer turn 1, append the answer
 * and turn 2, as a chat would. Prints figures; fails only on a token mismatch.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "drafters.h"
#include "gen/gen.h"

#define MAX_CONFIGS 8
#define MAX_GROUPS 8

static const char *mt_bench[] = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"};

static const char *group_of(const char *category) {
    for (size_t i = 0; i < sizeof mt_bench / sizeof *mt_bench; i++)
        if (!strcmp(category, mt_bench[i])) return "mt_bench";
    return category;
}

typedef struct tally {
    double plain_sec, spec_sec[MAX_CONFIGS];
    double plain_prefill_sec, spec_prefill_sec[MAX_CONFIGS]; /* parts of the above */
    int64_t steps[MAX_CONFIGS], tokens[MAX_CONFIGS], drafted[MAX_CONFIGS], accepted[MAX_CONFIGS];
    int turns, identical[MAX_CONFIGS];
} tally;

typedef struct bench {
    td_engine e;
    td_kv *kv;
    td_ctx *ctx;
    int32_t max_len, max_tokens;
    const char *configs[MAX_CONFIGS];
    int n_configs;
    td_drafter_set ds[MAX_CONFIGS];
    td_spec_params spp;
    char groups[MAX_GROUPS][32];
    tally per_group[MAX_GROUPS], overall;
    int n_groups;
} bench;

static tally *group_tally(bench *b, const char *g) {
    for (int i = 0; i < b->n_groups; i++)
        if (!strcmp(b->groups[i], g)) return &b->per_group[i];
    if (b->n_groups == MAX_GROUPS) return NULL;
    snprintf(b->groups[b->n_groups], sizeof b->groups[0], "%s", g);
    return &b->per_group[b->n_groups++];
}

static void add_turn(tally *t, int c, double sec, const td_spec_request *rq, bool same) {
    t->spec_sec[c] += sec;
    t->spec_prefill_sec[c] += rq->stats.prefill_sec;
    t->steps[c] += rq->spec.n_steps;
    t->tokens[c] += rq->spec.n_tokens;
    t->drafted[c] += rq->spec.n_drafted;
    t->accepted[c] += rq->spec.n_accepted;
    t->identical[c] += same;
}

/* One turn: plain, then every configuration; returns the plain answer's
 * tokens (malloc'd) for the conversation, or NULL on error. */
static int32_t *run_turn(bench *b, tally *g, const int32_t *ids, size_t n, int32_t *n_out, int *mismatches) {
    td_err err = {0};
    td_gen_params gp = {.sample = td_sample_defaults(), .max_tokens = b->max_tokens};
    int32_t *plain = malloc((size_t)b->max_tokens * sizeof *plain);
    int32_t *spec = malloc((size_t)b->max_tokens * sizeof *spec);
    if (!plain || !spec) { free(plain); free(spec); return NULL; }
    td_gen_stats st;
    td_kv_truncate(b->kv, 0, 0);
    double t0 = td_now_sec();
    if (td_gen_run(b->e.model, b->e.tok, b->ctx, b->kv, 0, ids, n, &gp, NULL, NULL, plain, &st, &err)) {
        fprintf(stderr, "tandem bench spec: %s\n", err.msg);
        free(plain); free(spec);
        return NULL;
    }
    double plain_sec = td_now_sec() - t0;
    g->plain_sec += plain_sec;
    b->overall.plain_sec += plain_sec;
    g->plain_prefill_sec += st.prefill_sec;
    b->overall.plain_prefill_sec += st.prefill_sec;
    g->turns++;
    b->overall.turns++;
    *n_out = st.n_generated;
    for (int c = 0; c < b->n_configs; c++) {
        td_kv_truncate(b->kv, 0, 0);
        td_spec_request rq = {.prompt = ids, .n_prompt = n, .gen = gp, .out_tokens = spec};
        t0 = td_now_sec();
        if (td_spec_run(b->e.model, b->e.tok, b->ctx, b->kv, &rq, 1, b->ds[c].d, b->ds[c].n, &b->spp, &err)) {
            fprintf(stderr, "tandem bench spec: %s: %s\n", b->configs[c], err.msg);
            free(plain); free(spec);
            return NULL;
        }
        double sec = td_now_sec() - t0;
        bool same = rq.stats.n_generated == st.n_generated &&
                    memcmp(spec, plain, (size_t)st.n_generated * sizeof *spec) == 0;
        if (!same) {
            (*mismatches)++;
            fprintf(stderr, "tandem bench spec: MISMATCH with %s\n", b->configs[c]);
        }
        add_turn(g, c, sec, &rq, same);
        add_turn(&b->overall, c, sec, &rq, same);
    }
    free(spec);
    return plain;
}

/* A warm-up turn: every configuration answers, nothing is timed or
 * compared. Drafters that learn across requests (recycle's table) start the
 * measured questions the way a server's would, after other traffic. Returns
 * the answer (malloc'd) or NULL on error. */
static int32_t *warm_turn(bench *b, const int32_t *ids, size_t n, int32_t *n_out) {
    td_err err = {0};
    td_gen_params gp = {.sample = td_sample_defaults(), .max_tokens = b->max_tokens};
    int32_t *out = malloc((size_t)b->max_tokens * sizeof *out);
    if (!out) return NULL;
    for (int c = 0; c < b->n_configs; c++) {
        td_kv_truncate(b->kv, 0, 0);
        td_spec_request rq = {.prompt = ids, .n_prompt = n, .gen = gp, .out_tokens = out};
        if (td_spec_run(b->e.model, b->e.tok, b->ctx, b->kv, &rq, 1, b->ds[c].d, b->ds[c].n, &b->spp, &err)) {
            fprintf(stderr, "tandem bench spec: %s: %s\n", b->configs[c], err.msg);
            free(out);
            return NULL;
        }
        *n_out = rq.stats.n_generated;
    }
    return out;
}

/* Answers one question (a JSON line), turn by turn as a chat would, measured
 * or as warm-up. Returns 0, or -1 after printing why. */
static int answer_question(bench *b, const char *path, const char *line, int line_no, bool measure, int *mismatches) {
    cJSON *q = cJSON_Parse(line);
    const cJSON *cat = q ? cJSON_GetObjectItem(q, "category") : NULL, *turns = q ? cJSON_GetObjectItem(q, "turns") : NULL;
    if (!cJSON_IsString(cat) || !cJSON_IsArray(turns)) {
        fprintf(stderr, "tandem bench spec: %s:%d: not a question object (category, turns)\n", path, line_no + 1);
        cJSON_Delete(q);
        return -1;
    }
    tally *g = measure ? group_tally(b, group_of(cat->valuestring)) : NULL;
    if (measure && !g) {
        fprintf(stderr, "tandem bench spec: %s:%d: more than %d task groups\n", path, line_no + 1, MAX_GROUPS);
        cJSON_Delete(q);
        return -1;
    }
    td_chat_msg msgs[16];
    char *answers[8] = {0};
    int n_msgs = 0, n_turns = 0, rc = 0;
    const cJSON *turn;
    cJSON_ArrayForEach(turn, turns) {
        if (!cJSON_IsString(turn) || n_turns == 8) break;
        msgs[n_msgs++] = (td_chat_msg){"user", turn->valuestring};
        char *formatted = NULL;
        int32_t *ids = NULL, n_ans = 0;
        size_t n_ids = 0;
        td_err err = {0};
        if (td_tok_chat_format(b->e.tok, msgs, (size_t)n_msgs, true, &formatted, &err) ||
            td_tok_encode(b->e.tok, formatted, strlen(formatted), false, true, &ids, &n_ids, &err)) {
            fprintf(stderr, "tandem bench spec: question line %d: %s\n", line_no + 1, err.msg);
            free(formatted);
            break;
        }
        free(formatted);
        if (n_ids + (size_t)b->max_tokens + 64 > (size_t)b->max_len) { free(ids); break; }
        int32_t *answer = measure ? run_turn(b, g, ids, n_ids, &n_ans, mismatches) : warm_turn(b, ids, n_ids, &n_ans);
        free(ids);
        if (!answer) { rc = -1; break; }
        char *ans_text = NULL;
        size_t ans_len = 0;
        int dec = td_tok_decode(b->e.tok, answer, (size_t)n_ans, false, &ans_text, &ans_len, &err);
        free(answer);
        if (dec) break;
        answers[n_turns++] = ans_text;
        msgs[n_msgs++] = (td_chat_msg){"assistant", ans_text};
    }
    for (int i = 0; i < n_turns; i++) free(answers[i]);
    cJSON_Delete(q);
    return rc;
}

static void print_row(const bench *b, const char *name, const tally *t) {
    printf("%-16s %5d", name, t->turns);
    for (int c = 0; c < b->n_configs; c++) {
        double speed = t->spec_sec[c] > 0 ? t->plain_sec / t->spec_sec[c] : 0;
        double spec_dec = t->spec_sec[c] - t->spec_prefill_sec[c];
        double dec_speed = spec_dec > 0 ? (t->plain_sec - t->plain_prefill_sec) / spec_dec : 0;
        double per_pass = t->steps[c] ? (double)t->tokens[c] / t->steps[c] : 0;
        double acc = t->drafted[c] ? 100.0 * t->accepted[c] / t->drafted[c] : 0;
        printf(" | %5.2fx %5.2fx %4.2f %4.0f%% %s", speed, dec_speed, per_pass, acc,
               t->identical[c] == t->turns ? "ok" : "NO");
    }
    printf("\n");
}

int td_cmd_bench_spec(int argc, char **argv) {
    const char *cmd = "bench spec";
    char buf[1024];
    const char *model = td_cli_default_model(buf, sizeof buf), *prompts = NULL;
    long limit = 0, warmup = 0, threads = 0, max_tokens = 256, k = 8;
    td_numerics numerics = TD_NUMERICS_FAST;
    bool numerics_given = false;
    td_device device = {TD_DEVICE_CPU, 0};
    double row_cost = 0;
    bench *b = calloc(1, sizeof *b);
    if (!b) return 1;
    b->spp = td_spec_defaults();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            puts("usage: tandem bench spec --prompts FILE.jsonl [--limit N] [--warmup N] [--draft LIST]...\n"
                 "                         [--max-tokens N] [--draft-max K] [--row-cost C] [--threads N] [--model PATH]\n"
                 "                         [--numerics fast|reference|llamacpp] [--device cpu|cuda[:N]]\n\n"
                 "Each question (JSON lines: category, turns) is answered with plain greedy decoding and\n"
                 "with each --draft configuration (default: lookup, ngram, recycle, layerskip, auto),\n"
                 "side by side. Prints per task group: speedup over plain decoding (wall time of the\n"
                 "turns, prompt prefill included; then of the decoding after the prefill alone), mean\n"
                 "tokens per target pass, acceptance of drafted tokens, and whether the tokens were\n"
                 "identical. --limit N takes N questions spread over the file.\n"
                 "--warmup N first answers N other questions of the file with every configuration,\n"
                 "untimed, so that drafters which learn across requests (recycle's table, as in a\n"
                 "long-running server) are measured warm; the default 0 measures them cold.\n"
                 "--row-cost C plans each step as if an extra verified row cost C of a one-row pass\n"
                 "(default: learned from this machine); a small C (e.g. 0.02) drafts as for a GPU\n"
                 "verifier, where tokens per pass is the figure that carries over.\n\n"
                 TD_CLI_NUMERICS_HELP TD_CLI_DEVICE_HELP);
            free(b);
            return 0;
        }
        if (!strcmp(a, "--model")) { if (!(model = td_cli_value(cmd, argc, argv, &i))) goto usage; }
        else if (!strcmp(a, "--prompts")) { if (!(prompts = td_cli_value(cmd, argc, argv, &i))) goto usage; }
        else if (!strcmp(a, "--draft")) {
            if (!(v = td_cli_value(cmd, argc, argv, &i))) goto usage;
            if (b->n_configs == MAX_CONFIGS) { fprintf(stderr, "tandem bench spec: at most %d --draft\n", MAX_CONFIGS); goto usage; }
            b->configs[b->n_configs++] = v;
        }
        else if (!strcmp(a, "--limit")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 0, 1 << 20, &limit)) goto usage; }
        else if (!strcmp(a, "--warmup")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 0, 1 << 20, &warmup)) goto usage; }
        else if (!strcmp(a, "--threads")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 1, 256, &threads)) goto usage; }
        else if (!strcmp(a, "--numerics")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_numerics(cmd, v, &numerics)) goto usage; numerics_given = true; }
        else if (!strcmp(a, "--device")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_device(cmd, v, &device)) goto usage; }
        else if (!strcmp(a, "--max-tokens")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 1, 4096, &max_tokens)) goto usage; }
        else if (!strcmp(a, "--draft-max")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_int(cmd, a, v, 1, TD_DRAFT_MAX, &k)) goto usage; }
        else if (!strcmp(a, "--row-cost")) { if (!(v = td_cli_value(cmd, argc, argv, &i)) || !td_cli_float(cmd, a, v, 1e-4, 10, &row_cost)) goto usage; b->spp.row_cost = (float)row_cost; }
        else { fprintf(stderr, "tandem bench spec: unknown option '%s'\n", a); goto usage; }
    }
    if (!prompts) { fprintf(stderr, "tandem bench spec: --prompts is required\n"); goto usage; }
    if (b->n_configs == 0) {
        static const char *defaults[] = {"lookup", "ngram", "recycle", "layerskip", "auto"};
        for (int i = 0; i < 5; i++) b->configs[b->n_configs++] = defaults[i];
    }
    if (!td_cli_device_numerics(cmd, device, numerics_given, &numerics) ||
        !td_cli_numerics_allow_speculation(cmd, numerics)) { free(b); return 2; }
    b->spp.draft_max = (int32_t)k;
    b->max_tokens = (int32_t)max_tokens;
    b->max_len = 4096;

    size_t len;
    char *text = td_cli_read_file(cmd, prompts, &len);
    if (!text) { free(b); return 1; }
    int status = 1, mismatches = 0, n_lines = 0;
    for (char *p = text; *p; p++) n_lines += *p == '\n';
    if (td_cli_engine_open(&b->e, model, (int)threads)) { free(text); free(b); return 1; }
    int opened = 0;
    td_err err = {0};
    if (!(b->kv = td_kv_create(b->e.model, 1, b->max_len, &err))) {
        fprintf(stderr, "tandem bench spec: %s\n", err.msg);
        goto out;
    }
    if (!(b->ctx = td_cli_ctx(cmd, &b->e, 512, b->e.pool, device, numerics))) goto out;
    td_sample_params greedy = td_sample_defaults();
    for (; opened < b->n_configs; opened++)
        /* one user's questions: recycle's table is shared across them, as
         * the warm-up (a server's earlier traffic) means it to be */
        if (td_cli_drafters_open(&b->ds[opened], b->configs[opened], &b->e, &greedy, 1, b->max_len, TD_DRAFTER_SHARED))
            goto out;

    char cost[32] = "learned";
    if (row_cost > 0) snprintf(cost, sizeof cost, "%g", row_cost);
    if (device.kind == TD_DEVICE_CUDA) printf("bench spec: target on cuda:%d\n", td_device_resolve(device).index);
    printf("bench spec: %s, threads %d, max %d new tokens per turn, draft max %ld, row cost %s, %s numerics, greedy",
           prompts, b->e.n_threads, b->max_tokens, k, cost, td_numerics_name(numerics));
    if (warmup > 0) printf(", after %ld warm-up questions", warmup);
    printf("\n");
    char **lines = malloc((size_t)(n_lines + 1) * sizeof *lines);
    if (!lines) { fprintf(stderr, "tandem bench spec: out of memory\n"); goto out; }
    n_lines = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) lines[n_lines++] = line;
    /* --limit N: every (lines/N)-th question, so all groups are sampled */
    int stride = limit > 0 && limit < n_lines ? n_lines / (int)limit : 1, n_measured = 0;
    for (int i = 0; i < n_lines && (limit <= 0 || n_measured < limit); i += stride) n_measured++;
    if (warmup > 0) {
        /* warm-up questions sit between the measured ones, spread likewise */
        int free_lines = n_lines - n_measured, wstride = free_lines > warmup ? free_lines / (int)warmup : 1, seen = 0;
        if (free_lines <= 0) { fprintf(stderr, "tandem bench spec: --warmup: every question is measured, none left to warm up on\n"); goto out_lines; }
        for (int i = 0, done = 0; i < n_lines && done < warmup; i++) {
            if (i % stride == 0 && i / stride < n_measured) continue;
            if (seen++ % wstride) continue;
            if (answer_question(b, prompts, lines[i], i, false, &mismatches)) goto out_lines;
            fprintf(stderr, "\r[bench spec] warm-up: %d questions", ++done);
        }
        fprintf(stderr, "\n");
    }
    for (int i = 0, done = 0; done < n_measured; i += stride) {
        if (answer_question(b, prompts, lines[i], i, true, &mismatches)) goto out_lines;
        fprintf(stderr, "\r[bench spec] %d questions", ++done);
    }
    fprintf(stderr, "\n");
    printf("%-16s %5s", "group", "turns");
    for (int c = 0; c < b->n_configs; c++) printf(" | %-28.28s", b->configs[c]);
    printf("\n%-16s %5s", "", "");
    for (int c = 0; c < b->n_configs; c++) printf(" | %-28s", "speed decode tok/pass acc");
    printf("\n");
    for (int i = 0; i < b->n_groups; i++) print_row(b, b->groups[i], &b->per_group[i]);
    print_row(b, "overall", &b->overall);
    printf("tokens identical to plain decoding: %s\n", mismatches ? "NO" : "yes, every turn and configuration");
    status = mismatches ? 1 : 0;
out_lines:
    free(lines);
out:
    for (int c = 0; c < opened; c++) td_cli_drafters_close(&b->ds[c]);
    td_ctx_destroy(b->ctx);
    td_kv_destroy(b->kv);
    td_cli_engine_close(&b->e);
    free(text);
    free(b);
    return status;
usage:
    free(b);
    return 2;
}
