/* remote_generate.c — `tandem generate --server ADDR`: sends the request to
 * a coordinator (tandem.v1.Inference/Generate) and prints the streamed text
 * exactly as the local command does, with a summary line on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "net/net.h"
#include "tandem/v1/inference.pb-c.h"

/* --draft as the service names drafters: model:PATH is the cluster's draft
 * model, layerskip[:A-B] the verifiers' own skipping. */
static void service_drafters(const char *draft, char *out, size_t cap) {
    out[0] = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", draft ? draft : "none");
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        const char *name = !strncmp(t, "model:", 6) ? "model" : !strncmp(t, "layerskip", 9) ? "layerskip" : t;
        size_t n = strlen(out);
        snprintf(out + n, cap - n, "%s%s", n ? "," : "", name);
    }
}

static const char *finish_name(int f) {
    switch (f) {
    case TANDEM__V1__FINISH_REASON__FINISH_LENGTH: return "length";
    case TANDEM__V1__FINISH_REASON__FINISH_EOS: return "end-of-generation";
    case TANDEM__V1__FINISH_REASON__FINISH_STOP_STRING: return "stop string";
    case TANDEM__V1__FINISH_REASON__FINISH_CONTEXT: return "context full";
    case TANDEM__V1__FINISH_REASON__FINISH_CANCELLED: return "cancelled";
    default: return "?";
    }
}

int td_cli_remote_generate(const td_cli_remote_gen *g) {
    td_err err = {0};
    td_cli_conn conn = {.tls_ca = g->tls_ca, .token_file = g->token_file};
    td_net_channel *ch = td_cli_conn_open("generate", &conn, g->server, NULL);
    if (!ch) return 1;
    Tandem__V1__GenerateRequest q = TANDEM__V1__GENERATE_REQUEST__INIT;
    Tandem__V1__SamplingParams sp = TANDEM__V1__SAMPLING_PARAMS__INIT;
    Tandem__V1__SpeculationParams spec = TANDEM__V1__SPECULATION_PARAMS__INIT;
    char drafters[512];
    service_drafters(g->draft, drafters, sizeof drafters);
    q.prompt = (char *)g->prompt;
    q.chat = g->chat;
    q.system = (char *)(g->system ? g->system : "");
    q.max_tokens_opt_case = TANDEM__V1__GENERATE_REQUEST__MAX_TOKENS_OPT_MAX_TOKENS;
    q.max_tokens = g->max_tokens;
    sp.temperature_opt_case = TANDEM__V1__SAMPLING_PARAMS__TEMPERATURE_OPT_TEMPERATURE;
    sp.temperature = g->sample.temperature;
    sp.top_k_opt_case = TANDEM__V1__SAMPLING_PARAMS__TOP_K_OPT_TOP_K;
    sp.top_k = g->sample.top_k;
    sp.top_p_opt_case = TANDEM__V1__SAMPLING_PARAMS__TOP_P_OPT_TOP_P;
    sp.top_p = g->sample.top_p;
    sp.min_p_opt_case = TANDEM__V1__SAMPLING_PARAMS__MIN_P_OPT_MIN_P;
    sp.min_p = g->sample.min_p;
    sp.repeat_penalty_opt_case = TANDEM__V1__SAMPLING_PARAMS__REPEAT_PENALTY_OPT_REPEAT_PENALTY;
    sp.repeat_penalty = g->sample.repeat_penalty;
    sp.repeat_last_n_opt_case = TANDEM__V1__SAMPLING_PARAMS__REPEAT_LAST_N_OPT_REPEAT_LAST_N;
    sp.repeat_last_n = g->sample.repeat_last_n;
    /* the local command's default seed is 0: the same default here keeps
     * `--server` output identical to local output */
    sp.seed_opt_case = TANDEM__V1__SAMPLING_PARAMS__SEED_OPT_SEED;
    sp.seed = g->sample.seed;
    q.sampling = &sp;
    q.n_stop = g->n_stop;
    q.stop = (char **)g->stop;
    q.ignore_eos = g->ignore_eos;
    spec.drafters = drafters;
    spec.draft_max_opt_case = TANDEM__V1__SPECULATION_PARAMS__DRAFT_MAX_OPT_DRAFT_MAX;
    spec.draft_max = g->draft_max;
    spec.draft_min_opt_case = TANDEM__V1__SPECULATION_PARAMS__DRAFT_MIN_OPT_DRAFT_MIN;
    spec.draft_min = g->draft_min;
    spec.draft_fixed = g->draft_fixed;
    q.speculation = &spec;
    q.logprobs = g->logprobs;
    q.no_special = !g->parse_special;
    q.request_id = (char *)(g->request_id ? g->request_id : "");

    td_net_stream *s = td_net_stream_open(ch, "/tandem.v1.Inference/Generate", &q.base, g->deadline_ms, td_cli_conn_md(&conn), conn.n_md, &err);
    if (!s) {
        fprintf(stderr, "tandem generate: %s\n", err.msg);
        td_net_channel_close(ch);
        td_cli_conn_close(&conn);
        return 1;
    }
    int status = 1;
    bool done = false;
    char req[64] = "";
    for (;;) {
        ProtobufCMessage *m = NULL;
        td_net_status st;
        int got = td_net_stream_next(s, &tandem__v1__generate_response__descriptor, &m, &st);
        if (got <= 0) {
            if (st.code != TD_NET_OK) fprintf(stderr, "\ntandem generate: %s: %s: %s\n", g->server, td_net_code_name(st.code), st.msg);
            else if (!done) fprintf(stderr, "\ntandem generate: the stream ended without a final message\n");
            else status = 0;
            break;
        }
        const Tandem__V1__GenerateResponse *r = (const Tandem__V1__GenerateResponse *)m;
        if (r->request_id[0]) snprintf(req, sizeof req, "%s", r->request_id);
        fwrite(r->text, 1, strlen(r->text), stdout);
        fflush(stdout);
        if (g->logprobs > 0)
            for (size_t i = 0; i < r->n_tokens; i++) fprintf(stderr, "[token %d logprob %.4f]\n", r->tokens[i]->id, (double)r->tokens[i]->logprob);
        if (r->done) {
            done = true;
            const Tandem__V1__Usage *u = r->usage;
            const Tandem__V1__SpeculationStats *x = r->speculation;
            fprintf(stderr,
                    "\n[tandem] server %s, request %s, prompt %d tokens, generated %d tokens in %.2f s "
                    "(first token %.3f s), stop: %s, %.2f tokens/pass (%lld drafted, %lld accepted)\n",
                    g->server, req, u ? u->prompt_tokens : 0, u ? u->completion_tokens : 0, u ? u->total_sec : 0,
                    u ? u->time_to_first_token_sec : 0, finish_name(r->finish_reason), x ? x->tokens_per_pass : 0,
                    x ? (long long)x->drafted : 0, x ? (long long)x->accepted : 0);
        }
        protobuf_c_message_free_unpacked(m, NULL);
    }
    td_net_stream_close(s);
    td_net_channel_close(ch);
    td_cli_conn_close(&conn);
    return status;
}
