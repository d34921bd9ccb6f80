/* fuzz_coordinator.c — libFuzzer target for every public handler of
 * tandem-coordinator: tandem.v1.Inference (Generate, Score, Tokenize,
 * ListModels), vllm.grpc.engine.VllmEngine (Generate, Abort, HealthCheck,
 * GetModelInfo, GetServerInfo, GetLoads, GetTokenizer) and
 * grpc.health.v1 (Check, Watch). The coordinator is built as its main()
 * builds it (member table, model cache, planner statistics, vLLM state,
 * prefix affinity) and its handlers registered on a server that never
 * starts; it knows no worker, so a request is decoded and checked, then
 * fails for want of a verifier (UNAVAILABLE) unless its own fields are
 * refused first (INVALID_ARGUMENT and friends). Nothing reaches the
 * network: with no member there is nothing to dial.
 *
 * Input: byte 0 picks the method (bits 0-4, modulo the methods registered;
 * bit 6: the client is gone; bit 7: its deadline has passed), the rest are
 * the request's bytes, through td_net_server_dispatch (the server's own
 * unpack and INVALID_ARGUMENT for bytes that are no request).
 *
 * Checks (besides the sanitizers and fuzz_harness.h's): the codes a
 * coordinator without workers may give — OK only for the calls that need no
 * model (ListModels, Abort, HealthCheck, GetServerInfo, GetLoads, health
 * Check), UNAVAILABLE naming the missing verifier, INVALID_ARGUMENT,
 * NOT_FOUND (health), CANCELLED or DEADLINE_EXCEEDED for a client that
 * left; never OK for a call that needs a model.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.pb-c.h"
#include "coordinator.h"
#include "fuzz_harness.h"
#include "grpc/health/v1/health.pb-c.h"
#include "tandem/v1/inference.pb-c.h"
#include "vllm_engine.pb-c.h"

enum { MAX_METHODS = 32 };

/* Every method the coordinator registers, in registration order, and
 * whether it can answer OK without a model. */
static const struct {
    fz_method m;
    bool modelless;
} k_methods[] = {
    {{"/tandem.v1.Inference/Generate", &tandem__v1__generate_response__descriptor}, false},
    {{"/tandem.v1.Inference/Score", &tandem__v1__score_response__descriptor}, false},
    {{"/tandem.v1.Inference/Tokenize", &tandem__v1__tokenize_response__descriptor}, false},
    {{"/tandem.v1.Inference/ListModels", &tandem__v1__list_models_response__descriptor}, true},
    {{"/vllm.grpc.engine.VllmEngine/Generate", &vllm__grpc__engine__generate_response__descriptor}, false},
    {{"/vllm.grpc.engine.VllmEngine/Abort", &vllm__grpc__engine__abort_response__descriptor}, true},
    {{"/vllm.grpc.engine.VllmEngine/HealthCheck", &vllm__grpc__engine__health_check_response__descriptor}, true},
    {{"/vllm.grpc.engine.VllmEngine/GetModelInfo", &vllm__grpc__engine__get_model_info_response__descriptor}, false},
    {{"/vllm.grpc.engine.VllmEngine/GetServerInfo", &vllm__grpc__engine__get_server_info_response__descriptor}, true},
    {{"/vllm.grpc.engine.VllmEngine/GetLoads", &vllm__grpc__engine__get_loads_response__descriptor}, true},
    {{"/vllm.grpc.engine.VllmEngine/GetTokenizer", &smg__grpc__common__get_tokenizer_chunk__descriptor}, false},
    {{"/grpc.health.v1.Health/Check", &grpc__health__v1__health_check_response__descriptor}, true},
    {{"/grpc.health.v1.Health/Watch", &grpc__health__v1__health_check_response__descriptor}, false},
};
enum { N_METHODS = sizeof k_methods / sizeof k_methods[0] };

/* The process's fuzzing state, made once (libFuzzer runs inputs one after
 * another on one thread). */
static struct {
    td_coord coord;
    td_net_server *server;
    td_net_health *health;
} g_fz;

static void die(const char *what, const td_err *err) {
    fprintf(stderr, "fuzz_coordinator: %s: %s\n", what, err ? err->msg : "");
    exit(1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    td_log_setup("fuzz_coordinator", TD_LOG_ERROR);
    td_err err = {0};
    /* what coord_main.c's main() makes, with its defaults and no etcd */
    td_coord *c = &g_fz.coord;
    *c = (td_coord){.max_tokens_default = 128, .step_timeout_min_ms = 10000, .write_timeout_ms = 10000,
                    .overlap = true, .next_seq = 1};
    if (!(c->members = td_coord_members_create(2000, NULL, &err)) || !(c->models = td_coord_models_create(&err)) ||
        !(c->learned = td_spec_learned_create(&err)) || !(c->vllm = td_coord_vllm_create("auto", &err)) ||
        !(c->affinity = td_coord_affinity_create(&err)))
        die("coordinator", &err);
    td_net_server_opts so = {.name = "coordinator", .max_message_bytes = 1 << 20};
    if (!(g_fz.server = td_net_server_create(&so, &err)) || !(g_fz.health = td_net_health_create(&err)) ||
        td_coord_api_register(g_fz.server, c, &err) || td_coord_vllm_register(g_fz.server, c, &err) ||
        td_net_health_add(g_fz.health, g_fz.server, &err))
        die("server", &err);
    td_net_health_set(g_fz.health, "", TD_NET_HEALTH_SERVING);
    td_net_health_set(g_fz.health, "tandem.v1.Inference", TD_NET_HEALTH_NOT_SERVING);
    td_net_method_info info[MAX_METHODS];
    size_t n = td_net_server_methods(g_fz.server, info, MAX_METHODS);
    if (n != N_METHODS) die("the coordinator registers other methods than this target knows", NULL);
    for (size_t i = 0; i < n; i++)
        if (strcmp(info[i].path, k_methods[i].m.path)) die(info[i].path, NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t k = (size_t)(data[0] & 31) % N_METHODS;
    fz_call_opts o = {.gone = (data[0] & 64) != 0, .expired = (data[0] & 128) != 0};
    /* Watch waits for changes until its client leaves */
    if (strstr(k_methods[k].m.path, "/Watch") && !o.expired) o.gone = true;
    fz_result r;
    fz_call(g_fz.server, &k_methods[k].m, data + 1, size - 1, &o, &r);
    if (r.first) protobuf_c_message_free_unpacked(r.first, NULL);
    switch (r.code) {
    case TD_NET_OK:
        FZ_CHECK(k_methods[k].modelless);
        break;
    case TD_NET_UNAVAILABLE:
        if (!strstr(r.msg, "no verifier")) fprintf(stderr, "%s: UNAVAILABLE: %s\n", k_methods[k].m.path, r.msg);
        FZ_CHECK(strstr(r.msg, "no verifier") != NULL);
        break;
    case TD_NET_INVALID_ARGUMENT:
    case TD_NET_NOT_FOUND:
        break;
    case TD_NET_CANCELLED:
    case TD_NET_DEADLINE_EXCEEDED:
        FZ_CHECK(r.client_left);
        break;
    default:
        fprintf(stderr, "%s: unexpected %s: %s\n", k_methods[k].m.path, td_net_code_name(r.code), r.msg);
        FZ_CHECK(0);
    }
    return 0;
}
