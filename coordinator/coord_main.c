/* coord_main.c — tandem-coordinator: follows the worker set in etcd, serves
 * tandem.v1.Inference, vLLM's engine API (vllm.grpc.engine.VllmEngine, for
 * OpenAI-compatible gateways) and grpc.health.v1 (also on a plaintext
 * health-only port), and on SIGTERM or SIGINT stops accepting, lets requests finish for
 * a grace period, cancels the rest and exits 0.
 *
 * Health: the server ("") is SERVING while the process runs — liveness never
 * depends on etcd; "tandem.v1.Inference" is SERVING only while a verifier
 * is known and the etcd watch is current — readiness.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator.h"
#include "net/etcd.h"

static void usage(FILE *f) {
    fputs("usage: tandem-coordinator --listen ADDR (--etcd ENDPOINTS | --worker ROLE=ADDR...) [OPTIONS]\n"
          "\n"
          "Serves tandem.v1.Inference (Generate, Score, Tokenize, ListModels) and grpc.health.v1,\n"
          "running speculative decoding over the cluster's workers. Needs no model file.\n"
          "\n"
          "  --listen ADDR           gRPC address, e.g. 127.0.0.1:7000 (port 0 picks one)\n"
          "  --health-listen ADDR    plaintext port serving only grpc.health.v1 (for probes)\n"
          "  --metrics-listen ADDR   plaintext HTTP port serving Prometheus metrics (GET /metrics)\n"
          "  --max-connection-age-ms MS  close client connections after about this long (default 0: never),\n"
          "                          so clients reconnect and spread over new coordinator replicas\n"
          "  --tls-cert FILE         serve --listen over TLS with this certificate chain (PEM); needs\n"
          "                          --tls-key FILE (default: plaintext)\n"
          "  --tls-client-ca FILE    with TLS: clients must present a certificate signed by this CA\n"
          "  --auth-tokens FILE      bearer tokens, one a line: every call on --listen except\n"
          "                          grpc.health.v1 needs \"authorization: Bearer TOKEN\"\n"
          "                          (default: $TANDEM_AUTH_TOKENS_FILE, else no authentication)\n"
          "  --worker-tls-ca FILE    TLS to workers, verified against this CA; --worker-tls-cert and\n"
          "                          --worker-tls-key FILE add a client certificate (mutual TLS)\n"
          "  --etcd ENDPOINTS        etcd endpoints, comma separated: follow /tandem/CLUSTER/workers/\n"
          "  --cluster NAME          cluster name (default: default)\n"
          "  --etcd-ca FILE          TLS to etcd: CA certificate (PEM); --etcd-cert/--etcd-key FILE for\n"
          "                          client certificates\n"
          "  --etcd-user NAME        etcd authentication; the password comes from $TANDEM_ETCD_PASSWORD\n"
          "  --worker ROLE=ADDR      a worker without etcd (verifier=HOST:PORT or drafter=HOST:PORT);\n"
          "                          repeatable\n"
          "  --max-calls N           requests in flight at most; more get RESOURCE_EXHAUSTED (default 64)\n"
          "  --max-calls-per-token N with --auth-tokens: requests in flight per token at most, so one\n"
          "                          client cannot take every slot (default 0: only --max-calls)\n"
          "  --max-tokens N          default max_tokens of Generate (default 128)\n"
          "  --step-timeout-ms MS    floor of the per-step deadline on verifiers (default 10000); a step\n"
          "                          may also take 20x the measured step time. A hung verifier is\n"
          "                          usually caught sooner, by keepalive\n"
          "  --keepalive-ms MS       HTTP/2 keepalive to workers: a hung worker is dropped after about\n"
          "                          twice this (default 2000)\n"
          "  --write-timeout-ms MS   cancel a stream whose client reads nothing this long (default 10000)\n"
          "  --grace-ms MS           on SIGTERM, time requests get to finish (default 5000)\n"
          "  --vllm-drafters LIST    speculation for requests of the vLLM engine API (served on --listen\n"
          "                          beside tandem.v1): auto (default), none, or a list of lookup,\n"
          "                          ngram, recycle, layerskip, model; tokens are the same either way\n"
          "  --no-affinity           always the least-loaded verifier (default: a request whose prompt\n"
          "                          continues an earlier one goes to the verifier that cached it,\n"
          "                          unless that one has 2 more requests in flight)\n"
          "  --no-overlap            draft models draft only after verification returns (benchmarks;\n"
          "                          by default window i+1 is drafted while window i is verified)\n"
          "  --log-level LEVEL       debug, info (default), warn, error\n",
          f);
}

static bool parse_long(const char *opt, const char *v, long lo, long hi, long *out) {
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || x < lo || x > hi) {
        fprintf(stderr, "tandem-coordinator: %s needs an integer in %ld..%ld (got \"%s\")\n", opt, lo, hi, v ? v : "");
        return false;
    }
    *out = x;
    return true;
}

#define MAX_STATIC 32

int main(int argc, char **argv) {
    const char *listen = NULL, *health_listen = NULL, *metrics_listen = NULL, *etcd_ep = NULL, *cluster = "default", *vllm_drafters = "auto";
    const char *statics[MAX_STATIC];
    int n_static = 0;
    bool overlap = true, affinity = true;
    long max_conn_age_ms = 0, max_calls = 64, max_tokens = 128, step_ms = 10000, keepalive_ms = 2000, write_ms = 10000, grace_ms = 5000, per_token = 0;
    td_log_level level = TD_LOG_INFO;
    td_etcd_opts eo = {0};
    td_net_tls tls = {0}, wtls = {0};
    const char *tokens_file = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        if (!strcmp(a, "--no-overlap")) { overlap = false; continue; }
        if (!strcmp(a, "--no-affinity")) { affinity = false; continue; }
        if (!v) { fprintf(stderr, "tandem-coordinator: unknown option or missing value: %s\n", a); usage(stderr); return 2; }
        i++;
        if (!strcmp(a, "--listen")) listen = v;
        else if (!strcmp(a, "--health-listen")) health_listen = v;
        else if (!strcmp(a, "--metrics-listen")) metrics_listen = v;
        else if (!strcmp(a, "--max-connection-age-ms")) { if (!parse_long(a, v, 0, 2147483647, &max_conn_age_ms)) return 2; }
        else if (!strcmp(a, "--tls-cert")) tls.cert_file = v;
        else if (!strcmp(a, "--tls-key")) tls.key_file = v;
        else if (!strcmp(a, "--tls-client-ca")) tls.ca_file = v;
        else if (!strcmp(a, "--auth-tokens")) tokens_file = v;
        else if (!strcmp(a, "--worker-tls-ca")) wtls.ca_file = v;
        else if (!strcmp(a, "--worker-tls-cert")) wtls.cert_file = v;
        else if (!strcmp(a, "--worker-tls-key")) wtls.key_file = v;
        else if (!strcmp(a, "--etcd")) etcd_ep = v;
        else if (!strcmp(a, "--vllm-drafters")) vllm_drafters = v;
        else if (!strcmp(a, "--cluster")) cluster = v;
        else if (!strcmp(a, "--etcd-ca")) eo.ca_file = v;
        else if (!strcmp(a, "--etcd-cert")) eo.cert_file = v;
        else if (!strcmp(a, "--etcd-key")) eo.key_file = v;
        else if (!strcmp(a, "--etcd-user")) eo.user = v;
        else if (!strcmp(a, "--worker")) {
            if (n_static >= MAX_STATIC || (strncmp(v, "verifier=", 9) && strncmp(v, "drafter=", 8))) {
                fprintf(stderr, "tandem-coordinator: --worker verifier=HOST:PORT or drafter=HOST:PORT (at most %d)\n", MAX_STATIC);
                return 2;
            }
            statics[n_static++] = v;
        } else if (!strcmp(a, "--max-calls")) { if (!parse_long(a, v, 1, 100000, &max_calls)) return 2; }
        else if (!strcmp(a, "--max-calls-per-token")) { if (!parse_long(a, v, 0, 100000, &per_token)) return 2; }
        else if (!strcmp(a, "--max-tokens")) { if (!parse_long(a, v, 1, 1 << 20, &max_tokens)) return 2; }
        else if (!strcmp(a, "--step-timeout-ms")) { if (!parse_long(a, v, 10, 3600000, &step_ms)) return 2; }
        else if (!strcmp(a, "--keepalive-ms")) { if (!parse_long(a, v, 100, 3600000, &keepalive_ms)) return 2; }
        else if (!strcmp(a, "--write-timeout-ms")) { if (!parse_long(a, v, 10, 3600000, &write_ms)) return 2; }
        else if (!strcmp(a, "--grace-ms")) { if (!parse_long(a, v, 0, 3600000, &grace_ms)) return 2; }
        else if (!strcmp(a, "--log-level")) {
            if (!td_log_level_parse(v, &level)) { fprintf(stderr, "tandem-coordinator: --log-level debug|info|warn|error\n"); return 2; }
        } else {
            fprintf(stderr, "tandem-coordinator: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    td_err derr = {0};
    if (td_coord_drafters_check(vllm_drafters, &derr)) {
        fprintf(stderr, "tandem-coordinator: --vllm-drafters: %s\n", derr.msg);
        return 2;
    }
    if (per_token > 0 && !tokens_file) {
        fprintf(stderr, "tandem-coordinator: --max-calls-per-token needs --auth-tokens (calls are counted per token)\n");
        return 2;
    }
    if (!listen || (!etcd_ep && n_static == 0)) {
        fprintf(stderr, "tandem-coordinator: --listen and one of --etcd or --worker are required\n");
        usage(stderr);
        return 2;
    }
    if (!tls.cert_file != !tls.key_file || (tls.ca_file && !tls.cert_file)) {
        fprintf(stderr, "tandem-coordinator: --tls-cert and --tls-key go together; --tls-client-ca needs both\n");
        return 2;
    }
    if (!wtls.cert_file != !wtls.key_file || (wtls.cert_file && !wtls.ca_file)) {
        fprintf(stderr, "tandem-coordinator: --worker-tls-cert and --worker-tls-key go together and need --worker-tls-ca\n");
        return 2;
    }
    /* a client CA is given to be enforced, not merely to check certificates
     * that happen to be presented */
    tls.require_client_cert = tls.ca_file != NULL;
    if (!tokens_file && getenv("TANDEM_AUTH_TOKENS_FILE") && *getenv("TANDEM_AUTH_TOKENS_FILE"))
        tokens_file = getenv("TANDEM_AUTH_TOKENS_FILE");
    td_log_setup("coordinator", level);
    td_net_signals_block();

    td_err err = {0};
    int status = 1;
    td_coord c = {.max_tokens_default = (int32_t)max_tokens, .step_timeout_min_ms = (int32_t)step_ms,
                  .write_timeout_ms = (int32_t)write_ms, .overlap = overlap, .next_seq = 1};
    td_net_server *srv = NULL, *hsrv = NULL;
    td_net_health *health = NULL;
    td_etcd *etcd = NULL;
    td_etcd_watch *watch = NULL;
    td_coord_metrics *metrics = NULL;
    char **tokens = NULL;
    size_t n_tokens = 0;
    /* sequence keys: unique per coordinator process (several may share a worker) */
    {
        char id[40];
        td_coord_request_id(NULL, id);
        c.next_seq = strtoull(id, NULL, 16) & ~0xffffffULL;
    }
    if (tokens_file && td_net_tokens_load(tokens_file, &tokens, &n_tokens, &err)) goto out;
    if (!(c.members = td_coord_members_create((int32_t)keepalive_ms, wtls.ca_file ? &wtls : NULL, &err)) || !(c.models = td_coord_models_create(&err)) ||
        !(c.learned = td_spec_learned_create(&err)) || !(c.vllm = td_coord_vllm_create(vllm_drafters, &err)) ||
        (affinity && !(c.affinity = td_coord_affinity_create(&err))))
        goto out;
    for (int i = 0; i < n_static; i++) {
        const char *eq = strchr(statics[i], '=');
        char role[16];
        snprintf(role, sizeof role, "%.*s", (int)(eq - statics[i]), statics[i]);
        td_coord_members_add_static(c.members, role, eq + 1, &err);
    }
    /* the server keeps its own copies of the tokens */
    td_net_server_opts so = {.max_calls = (int32_t)max_calls, .name = "coordinator",
                             .tokens = (const char *const *)tokens, .n_tokens = n_tokens,
                             .max_calls_per_token = (int32_t)per_token,
                             .max_connection_age_ms = (int32_t)max_conn_age_ms};
    if (!(srv = td_net_server_create(&so, &err)) || !(health = td_net_health_create(&err)) ||
        td_coord_api_register(srv, &c, &err) || td_coord_vllm_register(srv, &c, &err) ||
        td_net_health_add(health, srv, &err))
        goto out;
    td_net_tokens_free(tokens, n_tokens);
    tokens = NULL;
    n_tokens = 0;
    int port = tls.cert_file ? td_net_server_listen_tls(srv, listen, &tls, &err) : td_net_server_listen(srv, listen, &err);
    if (port <= 0) goto out;
    if (health_listen) {
        td_net_server_opts ho = {.max_calls = 16, .name = "health"};
        if (!(hsrv = td_net_server_create(&ho, &err)) || td_net_health_add(health, hsrv, &err) ||
            td_net_server_listen(hsrv, health_listen, &err) <= 0 || td_net_server_start(hsrv, &err))
            goto out;
    }
    td_net_health_set(health, "", TD_NET_HEALTH_SERVING);
    td_net_health_set(health, "tandem.v1.Inference", TD_NET_HEALTH_NOT_SERVING);
    if (etcd_ep) {
        char prefix[256];
        snprintf(prefix, sizeof prefix, "/tandem/%s/workers/", cluster);
        eo.password = eo.user ? getenv("TANDEM_ETCD_PASSWORD") : NULL;
        if (!(etcd = td_etcd_open(etcd_ep, &eo, &err))) goto out;
        if (!(watch = td_etcd_watch_prefix(etcd, prefix, td_coord_members_on_event, c.members, &err)))
            goto out;
        td_log(TD_LOG_INFO, NULL, "following %s in etcd %s", prefix, etcd_ep);
    }
    if (metrics_listen && !(metrics = td_coord_metrics_start(metrics_listen, &c, watch, &err))) goto out;
    if (td_net_server_start(srv, &err)) goto out;
    td_log(TD_LOG_INFO, NULL, "serving tandem.v1.Inference on port %d (%s, %s; workers over %s)", port,
           !tls.cert_file ? "plaintext" : tls.ca_file ? "mutual TLS" : "TLS",
           so.n_tokens ? "bearer tokens required" : "no authentication",
           !wtls.ca_file ? "plaintext" : wtls.cert_file ? "mutual TLS" : "TLS");
    /* the bound port on stdout, for scripts that asked for port 0 */
    printf("port %d\n", port);
    fflush(stdout);

    int last_ready = -1;
    double etcd_down_since = td_now_sec(), last_warn = 0;
    for (;;) {
        int sig = td_net_signals_wait(500);
        if (sig) {
            td_log(TD_LOG_INFO, NULL, "signal %d: shutting down (grace %ld ms)", sig, grace_ms);
            break;
        }
        if (watch) {
            if (td_etcd_watch_alive(watch)) etcd_down_since = 0;
            else if (etcd_down_since == 0) etcd_down_since = td_now_sec();
            if (etcd_down_since > 0 && td_now_sec() - etcd_down_since > 3 && td_now_sec() - last_warn > 10) {
                td_log(TD_LOG_WARN, NULL, "etcd %s unreachable for %.0f s: serving the %d workers known, retrying", etcd_ep,
                       td_now_sec() - etcd_down_since, td_coord_members_count(c.members, "verifier", NULL) +
                                                           td_coord_members_count(c.members, "drafter", NULL));
                last_warn = td_now_sec();
            }
        }
        bool ready = td_coord_members_count(c.members, "verifier", NULL) > 0 && (!watch || td_etcd_watch_alive(watch));
        if ((int)ready != last_ready) {
            td_net_health_set(health, "tandem.v1.Inference", ready ? TD_NET_HEALTH_SERVING : TD_NET_HEALTH_NOT_SERVING);
            td_log(ready ? TD_LOG_INFO : TD_LOG_WARN, NULL, "readiness: %s (%d verifiers%s)", ready ? "SERVING" : "NOT_SERVING",
                   td_coord_members_count(c.members, "verifier", NULL), watch && !td_etcd_watch_alive(watch) ? ", etcd away" : "");
            last_ready = ready;
        }
    }
    status = 0;
out:
    if (status) td_log(TD_LOG_ERROR, NULL, "%s", err.msg);
    if (health) {
        td_net_health_set(health, "tandem.v1.Inference", TD_NET_HEALTH_NOT_SERVING);
        td_net_health_shutdown(health);
    }
    if (srv) td_net_server_shutdown(srv, (int32_t)grace_ms);
    td_net_server_destroy(srv);
    td_net_server_destroy(hsrv);
    td_coord_metrics_stop(metrics);
    td_etcd_watch_stop(watch);
    td_etcd_close(etcd);
    td_net_health_destroy(health);
    td_coord_models_destroy(c.models);
    td_spec_learned_destroy(c.learned);
    td_coord_vllm_destroy(c.vllm);
    td_coord_affinity_destroy(c.affinity);
    td_coord_members_destroy(c.members);
    td_net_tokens_free(tokens, n_tokens);
    td_log(TD_LOG_INFO, NULL, "stopped");
    return status;
}
