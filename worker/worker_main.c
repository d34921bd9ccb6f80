/* worker_main.c — tandem-worker: loads a model, serves tandem.v1.Worker and
 * grpc.health.v1 over gRPC, registers itself in etcd under a lease (and
 * again whenever the lease is lost), reports its load there, and on SIGTERM
 * or SIGINT deregisters, lets calls in flight finish (then cancels them)
 * and exits 0. A tensor-parallel group's follower ranks leave those signals
 * pending: they follow until rank 0 has drained and ends the group, then
 * exit 0 too (so a rollout that signals every pod at once loses nothing).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net/etcd.h"
#include "net/net.h"
#include "worker.h"

static void usage(FILE *f) {
    fputs("usage: tandem-worker --role verifier|drafter --model PATH --listen ADDR [OPTIONS]\n"
          "\n"
          "Serves one model to tandem coordinators (tandem.v1.Worker over gRPC).\n"
          "  verifier: holds sequences, verifies draft trees (concurrent calls share\n"
          "            forward passes), scores texts, drafts by layer skipping\n"
          "  drafter:  drafts with its (small) model for the coordinators\n"
          "\n"
          "  --role ROLE           verifier or drafter (required)\n"
          "  --model PATH          GGUF model (required)\n"
          "  --listen ADDR         gRPC address, e.g. 127.0.0.1:7100 (required; port 0 picks one)\n"
          "  --health-listen ADDR  plaintext port serving only grpc.health.v1 (for probes)\n"
          "  --metrics-listen ADDR plaintext HTTP port serving Prometheus metrics (GET /metrics)\n"
          "  --tls-cert FILE       serve the Worker port over TLS with this certificate chain (PEM);\n"
          "                        needs --tls-key FILE (default: plaintext)\n"
          "  --tls-client-ca FILE  with TLS: coordinators must present a certificate signed by this\n"
          "                        CA (mutual TLS)\n"
          "  --advertise ADDR      address registered in etcd (default: the listen address)\n"
          "  --etcd ENDPOINTS      etcd endpoints, comma separated (default: no registration)\n"
          "  --cluster NAME        cluster name: registers under /tandem/NAME/workers/ (default: default)\n"
          "  --etcd-ca FILE        TLS to etcd: CA certificate (PEM); --etcd-cert/--etcd-key FILE for\n"
          "                        client certificates\n"
          "  --etcd-user NAME      etcd authentication; the password comes from $TANDEM_ETCD_PASSWORD\n"
          "  --id ID               worker id (default: ROLE-HOST-PORT)\n"
          "  --lease-ttl S         etcd lease TTL in seconds (default 10)\n"
          "  --threads N           compute threads (default: all cores)\n"
          "  --pin-threads         pin each compute thread but the first to its own CPU (refused\n"
          "                        when the process may use fewer CPUs than --threads)\n"
          "  --ctx N               longest sequence in tokens (default min(model, 4096))\n"
          "  --max-seqs N          open sequences at most (default 16)\n"
          "  --max-tokens N        cache tokens all open sequences may reserve (default max-seqs x ctx);\n"
          "                        a sequence reserves prompt + max new tokens at admission\n"
          "  --max-rows N          rows of one forward pass (default 256)\n"
          "  --idle-timeout S      reclaim sequences unused this long (default 120)\n"
          "  --max-calls N         gRPC calls in flight at most (default 256)\n"
          "  --numerics MODE       fast (default), reference or tp-invariant (the fingerprint\n"
          "                        says which)\n"
          "  --device DEV          cpu (default) or cuda[:N]: run the passes on a CUDA GPU (a build\n"
          "                        with -DTANDEM_CUDA=ON; any weight type the CPU runs). There\n"
          "                        --numerics defaults to reference (the CPU's bits);\n"
          "                        fast is the GPU's own order; tp-invariant its chunked order,\n"
          "                        the same bits at any --tp; its fingerprint says backend=cuda\n"
          "  --tp N                a tensor-parallel group of N processes, each holding 1/N of\n"
          "                        the model: mpirun -np N tandem-worker --role verifier --tp N\n"
          "                        ...; rank 0 serves and registers (tp: N), the others follow\n"
          "  --tp-comm NAME        the group's transport: mpi (default; host memory) or nccl\n"
          "                        (GPU to GPU, bootstrapped over MPI; with --device cuda)\n"
          "  --tp-rank R           no launcher (e.g. a StatefulSet's pods): this process is rank R\n"
          "                        of --tp N, NCCL ranks that meet through etcd: rank 0 publishes\n"
          "                        the group's id under /tandem/CLUSTER/groups/GROUP/, the others\n"
          "                        read it there (needs --tp-comm nccl, --etcd, --tp-group)\n"
          "  --tp-group NAME       with --tp-rank: the group's name, the same on every rank\n"
          "  --tp-generation G     with --tp-rank: names this start of the group, the same on every\n"
          "                        rank (e.g. the StatefulSet's revision; default 0), so an id an\n"
          "                        earlier start left is never joined\n"
          "  --tp-join-timeout S   with --tp-rank: how long the ranks wait for each other, in etcd\n"
          "                        and then in NCCL's join, which cannot be cancelled: past it the\n"
          "                        process exits 1 (default 600)\n"
          "  --no-batching         one verification per forward pass (benchmarks)\n"
          "  --no-prefix-cache     every sequence prefills its whole prompt (default: a new sequence\n"
          "                        reuses the cached prefix a closed one shares with it, e.g. the\n"
          "                        earlier turns of a chat; the tokens are the same either way)\n"
          "  --log-level LEVEL     debug, info (default), warn, error\n",
          f);
}

static bool parse_long(const char *opt, const char *v, long lo, long hi, long *out) {
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || x < lo || x > hi) {
        fprintf(stderr, "tandem-worker: %s needs an integer in %ld..%ld (got \"%s\")\n", opt, lo, hi, v ? v : "");
        return false;
    }
    *out = x;
    return true;
}

/* The plaintext port that serves only grpc.health.v1 (the probes'), or NULL
 * with err. */
static td_net_server *health_port_start(const char *addr, td_net_health *h, td_err *err) {
    td_net_server_opts ho = {.max_calls = 16, .name = "health"};
    td_net_server *srv = td_net_server_create(&ho, err);
    if (srv && !td_net_health_add(h, srv, err) && td_net_server_listen(srv, addr, err) > 0 &&
        !td_net_server_start(srv, err))
        return srv;
    td_net_server_destroy(srv);
    return NULL;
}

int main(int argc, char **argv) {
    td_worker_config cfg = {.role = -1, .cluster = "default", .lease_ttl = 10, .idle_timeout = 120,
                            .max_calls = 256, .numerics = TD_NUMERICS_FAST, .batching = true,
                            .prefix_cache = true};
    td_log_level level = TD_LOG_INFO;
    long tp = 1, tp_rank = -1, tp_join_timeout = 600;
    const char *tp_comm = "mpi", *tp_group = NULL, *tp_generation = NULL;
    bool numerics_given = false;
    td_etcd_opts eo = {0};
    td_net_tls tls = {0};
    const char *metrics_listen = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long l;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        if (!strcmp(a, "--no-batching")) { cfg.batching = false; continue; }
        if (!strcmp(a, "--no-prefix-cache")) { cfg.prefix_cache = false; continue; }
        if (!strcmp(a, "--pin-threads")) { cfg.pin_threads = true; continue; }
        if (!v) { fprintf(stderr, "tandem-worker: unknown option or missing value: %s\n", a); usage(stderr); return 2; }
        i++;
        if (!strcmp(a, "--role")) {
            if (!strcmp(v, "verifier")) cfg.role = TD_WORKER_VERIFIER;
            else if (!strcmp(v, "drafter")) cfg.role = TD_WORKER_DRAFTER;
            else { fprintf(stderr, "tandem-worker: --role must be verifier or drafter (got \"%s\")\n", v); return 2; }
        } else if (!strcmp(a, "--model")) cfg.model_path = v;
        else if (!strcmp(a, "--listen")) cfg.listen = v;
        else if (!strcmp(a, "--health-listen")) cfg.health_listen = v;
        else if (!strcmp(a, "--metrics-listen")) metrics_listen = v;
        else if (!strcmp(a, "--advertise")) cfg.advertise = v;
        else if (!strcmp(a, "--tls-cert")) tls.cert_file = v;
        else if (!strcmp(a, "--tls-key")) tls.key_file = v;
        else if (!strcmp(a, "--tls-client-ca")) tls.ca_file = v;
        else if (!strcmp(a, "--etcd")) cfg.etcd = v;
        else if (!strcmp(a, "--cluster")) cfg.cluster = v;
        else if (!strcmp(a, "--etcd-ca")) eo.ca_file = v;
        else if (!strcmp(a, "--etcd-cert")) eo.cert_file = v;
        else if (!strcmp(a, "--etcd-key")) eo.key_file = v;
        else if (!strcmp(a, "--etcd-user")) eo.user = v;
        else if (!strcmp(a, "--id")) cfg.id = v;
        else if (!strcmp(a, "--lease-ttl")) { if (!parse_long(a, v, 1, 3600, &l)) return 2; cfg.lease_ttl = (int32_t)l; }
        else if (!strcmp(a, "--threads")) { if (!parse_long(a, v, 1, 1024, &l)) return 2; cfg.threads = (int32_t)l; }
        else if (!strcmp(a, "--tp")) { if (!parse_long(a, v, 1, 64, &tp)) return 2; }
        else if (!strcmp(a, "--tp-rank")) { if (!parse_long(a, v, 0, 63, &tp_rank)) return 2; }
        else if (!strcmp(a, "--tp-group")) tp_group = v;
        else if (!strcmp(a, "--tp-generation")) tp_generation = v;
        else if (!strcmp(a, "--tp-join-timeout")) { if (!parse_long(a, v, 1, 86400, &tp_join_timeout)) return 2; }
        else if (!strcmp(a, "--tp-comm")) {
            if (strcmp(v, "mpi") != 0 && strcmp(v, "nccl") != 0) {
                fprintf(stderr, "tandem-worker: --tp-comm must be mpi or nccl (got \"%s\")\n", v);
                return 2;
            }
            tp_comm = v;
        }
        else if (!strcmp(a, "--ctx")) { if (!parse_long(a, v, 16, 1 << 20, &l)) return 2; cfg.ctx = (int32_t)l; }
        else if (!strcmp(a, "--max-seqs")) { if (!parse_long(a, v, 1, 4096, &l)) return 2; cfg.max_seqs = (int32_t)l; }
        else if (!strcmp(a, "--max-tokens")) { if (!parse_long(a, v, 16, 1L << 40, &l)) return 2; cfg.max_tokens = l; }
        else if (!strcmp(a, "--max-rows")) { if (!parse_long(a, v, 16, 4096, &l)) return 2; cfg.max_rows = (int32_t)l; }
        else if (!strcmp(a, "--idle-timeout")) { if (!parse_long(a, v, 1, 86400, &l)) return 2; cfg.idle_timeout = (int32_t)l; }
        else if (!strcmp(a, "--max-calls")) { if (!parse_long(a, v, 1, 100000, &l)) return 2; cfg.max_calls = (int32_t)l; }
        else if (!strcmp(a, "--device")) {
            td_err derr = {0};
            if (td_device_parse(v, &cfg.device, &derr)) { fprintf(stderr, "tandem-worker: --device: %s\n", derr.msg); return 2; }
        } else if (!strcmp(a, "--numerics")) {
            numerics_given = true;
            if (!strcmp(v, "fast")) cfg.numerics = TD_NUMERICS_FAST;
            else if (!strcmp(v, "reference")) cfg.numerics = TD_NUMERICS_REFERENCE;
            else if (!strcmp(v, "tp-invariant")) cfg.numerics = TD_NUMERICS_TP_INVARIANT;
            else { fprintf(stderr, "tandem-worker: --numerics must be fast, reference or tp-invariant (got \"%s\")\n", v); return 2; }
        } else if (!strcmp(a, "--log-level")) {
            if (!td_log_level_parse(v, &level)) { fprintf(stderr, "tandem-worker: --log-level debug|info|warn|error\n"); return 2; }
        } else {
            fprintf(stderr, "tandem-worker: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if ((int)cfg.role < 0 || !cfg.model_path || !cfg.listen) {
        fprintf(stderr, "tandem-worker: --role, --model and --listen are required\n");
        usage(stderr);
        return 2;
    }
    if (!tls.cert_file != !tls.key_file || (tls.ca_file && !tls.cert_file)) {
        fprintf(stderr, "tandem-worker: --tls-cert and --tls-key go together; --tls-client-ca needs both\n");
        return 2;
    }
    /* a client CA is given to be enforced: without a certificate from it a
     * coordinator is refused during the handshake */
    tls.require_client_cert = tls.ca_file != NULL;
    if (cfg.device.kind == TD_DEVICE_CUDA) {
        if (!numerics_given) cfg.numerics = TD_NUMERICS_REFERENCE;
        if (cfg.role == TD_WORKER_DRAFTER) {
            fprintf(stderr, "tandem-worker: --device cuda is for verifiers (a drafter's model runs on the CPU)\n");
            return 2;
        }
    }
    if (tp > 1 && cfg.role != TD_WORKER_VERIFIER) {
        fprintf(stderr, "tandem-worker: --tp is for verifiers\n");
        return 2;
    }
    if (!strcmp(tp_comm, "nccl") && cfg.device.kind != TD_DEVICE_CUDA) {
        fprintf(stderr, "tandem-worker: --tp-comm nccl carries device buffers: it needs --device cuda\n");
        return 2;
    }
    td_log_setup(cfg.role == TD_WORKER_VERIFIER ? "verifier" : "drafter", level);
    td_net_signals_block(); /* before any thread starts: gRPC's and the pool's inherit it */

    if (tp_rank < 0 && (tp_group || tp_generation)) {
        fprintf(stderr, "tandem-worker: --tp-group and --tp-generation name a group that meets through etcd: "
                        "they go with --tp-rank\n");
        return 2;
    }
    if (tp_rank >= 0) {
        const char *missing = tp < 2 ? "--tp N (2 or more)" : strcmp(tp_comm, "nccl") ? "--tp-comm nccl"
                              : !cfg.etcd ? "--etcd" : !tp_group ? "--tp-group" : NULL;
        if (missing) {
            fprintf(stderr, "tandem-worker: --tp-rank makes a group that meets through etcd without a launcher: "
                            "it needs %s\n", missing);
            return 2;
        }
        if (tp_rank >= tp) {
            fprintf(stderr, "tandem-worker: --tp-rank %ld is not a rank of --tp %ld (0..%ld)\n", tp_rank, tp, tp - 1);
            return 2;
        }
    } else if (tp > 1 && !td_comm_launched()) {
        fprintf(stderr, "tandem-worker: --tp %ld runs as %ld processes: start them with mpirun -np %ld, or give "
                        "each its --tp-rank (NCCL ranks meeting through etcd)\n", tp, tp, tp);
        return 2;
    }

    td_err err = {0};
    td_comm *comm = NULL;
    if (tp > 1) {
        eo.password = eo.user ? getenv("TANDEM_ETCD_PASSWORD") : NULL;
        td_worker_group_opts go = {.size = (int)tp, .comm = tp_comm, .rank = (int)tp_rank, .etcd = cfg.etcd,
                                   .cluster = cfg.cluster, .etcd_opts = &eo, .group = tp_group,
                                   .generation = tp_generation, .join_timeout_sec = (int32_t)tp_join_timeout,
                                   .device = cfg.device.index};
        if (!(comm = td_worker_group_open(&go, &err))) {
            td_log(TD_LOG_ERROR, NULL, "--tp %ld: %s", tp, err.msg);
            return 1; /* an MPI group's other ranks are left to mpirun */
        }
        cfg.comm = comm;
    }
    if (td_comm_rank(comm) != 0) { /* a follower: rank 0's steps on this shard, no Worker server, no etcd */
        td_worker_engine *f = td_worker_engine_create(&cfg, &err);
        if (!f) {
            td_log(TD_LOG_ERROR, NULL, "rank %d: cannot load %s: %s", td_comm_rank(comm), cfg.model_path, err.msg);
            return 1;
        }
        /* a rank in a pod of its own (--tp-rank) answers its probes:
         * service "" is SERVING while it follows (the group's Worker is rank
         * 0's); under mpirun rank 0 holds the pod's health port */
        td_net_health *fh = NULL;
        td_net_server *fsrv = NULL;
        if (cfg.health_listen && tp_rank > 0) {
            if (!(fh = td_net_health_create(&err)) || !(fsrv = health_port_start(cfg.health_listen, fh, &err))) {
                td_log(TD_LOG_ERROR, NULL, "rank %d: health port %s: %s", td_comm_rank(comm), cfg.health_listen,
                       err.msg);
                td_net_health_destroy(fh);
                td_worker_engine_destroy(f);
                return 1; /* a failed group: no collective shutdown */
            }
            td_net_health_set(fh, "", TD_NET_HEALTH_SERVING);
        }
        td_log(TD_LOG_INFO, NULL, "rank %d of %d: following rank 0", td_comm_rank(comm), td_comm_size(comm));
        int rc = td_worker_engine_follow(f, &err);
        if (rc) td_log(TD_LOG_ERROR, NULL, "rank %d: %s", td_comm_rank(comm), err.msg);
        if (fh) {
            td_net_health_set(fh, "", TD_NET_HEALTH_NOT_SERVING);
            td_net_health_shutdown(fh);
        }
        td_net_server_destroy(fsrv);
        td_net_health_destroy(fh);
        td_worker_engine_destroy(f);
        if (rc) return 1; /* a failed group: no collective shutdown */
        td_comm_close(comm);
        td_log(TD_LOG_INFO, NULL, "stopped");
        return 0;
    }
    int status = 1;
    td_net_server *srv = NULL, *hsrv = NULL;
    td_net_health *health = NULL;
    td_etcd *etcd = NULL;
    td_etcd_reg *reg = NULL;
    td_worker_metrics *metrics = NULL;
    char *json = NULL;
    double t0 = td_now_sec();
    td_worker_engine *e = td_worker_engine_create(&cfg, &err);
    if (!e) {
        td_log(TD_LOG_ERROR, NULL, "cannot load %s: %s", cfg.model_path, err.msg);
        return 1; /* a group's followers are left to mpirun */
    }
    const td_worker_info *in = td_worker_engine_info(e);
    td_log(TD_LOG_INFO, NULL, "model %s (%s) loaded in %.2f s; fingerprint %s", in->model_name, in->model_id,
           td_now_sec() - t0, in->fingerprint);

    td_net_server_opts so = {.max_calls = cfg.max_calls, .name = "worker"};
    if (!(srv = td_net_server_create(&so, &err)) || !(health = td_net_health_create(&err)) ||
        td_worker_rpc_register(srv, e, &err) || td_net_health_add(health, srv, &err))
        goto out;
    int port = tls.cert_file ? td_net_server_listen_tls(srv, cfg.listen, &tls, &err)
                             : td_net_server_listen(srv, cfg.listen, &err);
    if (port <= 0) goto out;
    if (cfg.health_listen && !(hsrv = health_port_start(cfg.health_listen, health, &err))) goto out;
    td_net_health_set(health, "", TD_NET_HEALTH_SERVING);
    td_net_health_set(health, "tandem.v1.Worker", TD_NET_HEALTH_SERVING);
    if (td_net_server_start(srv, &err)) goto out;

    /* The address others dial: --advertise, else the listen host with the
     * port actually bound. */
    char address[256], id[256];
    if (cfg.advertise) snprintf(address, sizeof address, "%s", cfg.advertise);
    else {
        const char *colon = strrchr(cfg.listen, ':');
        int host_len = colon ? (int)(colon - cfg.listen) : (int)strlen(cfg.listen);
        snprintf(address, sizeof address, "%.*s:%d", host_len, cfg.listen, port);
    }
    if (cfg.id) snprintf(id, sizeof id, "%s", cfg.id);
    else {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        snprintf(id, sizeof id, "%s-%s-%d", cfg.role == TD_WORKER_VERIFIER ? "verifier" : "drafter", host, port);
    }
    cfg.id = id;
    td_log(TD_LOG_INFO, NULL, "serving tandem.v1.Worker on %s (id %s, %s)", address, id,
           !tls.cert_file ? "plaintext" : tls.ca_file ? "mutual TLS" : "TLS");

    char key[512];
    snprintf(key, sizeof key, "/tandem/%s/workers/%s", cfg.cluster, id);
    if (cfg.etcd) {
        eo.password = eo.user ? getenv("TANDEM_ETCD_PASSWORD") : NULL;
        if (!(etcd = td_etcd_open(cfg.etcd, &eo, &err))) goto out;
        if (!(json = td_worker_registration_json(e, &cfg, address))) { td_err_set(&err, TD_E_NOMEM, "out of memory"); goto out; }
        if (!(reg = td_etcd_register(etcd, key, json, strlen(json), cfg.lease_ttl, &err))) goto out;
        td_log(TD_LOG_INFO, NULL, "registering %s in etcd %s (lease TTL %d s)", key, cfg.etcd, cfg.lease_ttl);
    }

    if (metrics_listen && !(metrics = td_worker_metrics_start(metrics_listen, e, reg, &err))) goto out;

    /* Main loop: wait for a signal; meanwhile report load changes to etcd. */
    bool was_alive = false;
    int32_t last_load = -1;
    double down_since = td_now_sec(), last_warn = 0;
    for (;;) {
        int sig = td_net_signals_wait(1000);
        if (sig) {
            td_log(TD_LOG_INFO, NULL, "signal %d: shutting down", sig);
            break;
        }
        td_worker_engine_reclaim(e);
        if (reg) {
            bool alive = td_etcd_reg_alive(reg);
            if (alive != was_alive)
                td_log(alive ? TD_LOG_INFO : TD_LOG_WARN, NULL, "etcd registration %s (generation %d)",
                       alive ? "live" : "lost, retrying", td_etcd_reg_generation(reg));
            if (alive) down_since = 0;
            else if (down_since == 0) down_since = td_now_sec();
            if (!alive && td_now_sec() - down_since > 3 && td_now_sec() - last_warn > 10) {
                td_log(TD_LOG_WARN, NULL, "etcd %s unreachable for %.0f s: not registered, still serving, retrying",
                       cfg.etcd, td_now_sec() - down_since);
                last_warn = td_now_sec();
            }
            was_alive = alive;
            td_worker_stats st;
            td_worker_engine_stats(e, &st);
            if (st.sequences != last_load) {
                char *j = td_worker_registration_json(e, &cfg, address);
                if (j) {
                    td_etcd_reg_update(reg, j, strlen(j));
                    free(json);
                    json = j;
                    last_load = st.sequences;
                }
            }
        }
    }
    status = 0;
out:
    if (status) td_log(TD_LOG_ERROR, NULL, "%s", err.msg);
    td_worker_metrics_stop(metrics);
    /* deregister first, so coordinators stop routing here, then drain */
    td_etcd_unregister(reg);
    td_etcd_close(etcd);
    if (health) td_net_health_set(health, "", TD_NET_HEALTH_NOT_SERVING);
    if (health) td_net_health_shutdown(health);
    td_net_server_destroy(hsrv);
    if (srv) td_net_server_shutdown(srv, 5000);
    td_net_server_destroy(srv);
    td_net_health_destroy(health);
    td_worker_engine_destroy(e); /* ends a group: its followers return */
    td_comm_close(comm);
    free(json);
    td_log(TD_LOG_INFO, NULL, "stopped");
    return status;
}
