/* fuzz_worker.c — libFuzzer target for every handler of tandem-worker
 * (tandem.v1.Worker: Prefill, Verify, Commit, Draft, Score, Release, Stats,
 * Describe; grpc.health.v1 Check and Watch): request bytes go through the
 * server's own path (td_net_server_dispatch: unpack, INVALID_ARGUMENT for
 * bytes that are no request, the handler) into a real engine on a tiny
 * random model (td-mktiny's micro shape), made at start-up by td-mktiny's
 * own code (tests/tools/mktiny.c).
 * Two workers: a verifier and a drafter, each on a server that never
 * starts; no network, no files left behind. Their limits are small so that
 * inputs reach them: 4 sequences, a context of 64, passes of 16 rows, one
 * thread. Watch (which waits for changes while its client stays) always
 * runs for a client that is gone.
 *
 * Input: byte 0 picks the worker (bit 0: drafter). Then up to 8 calls, each
 *   [method byte][length, 2 bytes little-endian][request bytes]
 * (the last call takes what is left when the input is shorter). Method
 * byte: bits 0-3 the method (modulo the methods registered); bit 4: set
 * the request's seq to 1 + bit 5 (appended to the bytes: protobuf keeps a
 * scalar field's last value), so that Prefill, Verify, Commit and Draft
 * meet one sequence; bit 6: the client is gone; bit 7: its deadline has
 * passed.
 *
 * Checks (besides the sanitizers and fuzz_harness.h's): a Verify that
 * succeeds answers one node per draft token plus the root, and a path of
 * tree nodes that descends from the root; a Draft that succeeds answers a
 * tree whose parents come before their children; after the input's calls,
 * every sequence they named is released, and then the worker holds no
 * sequence and no reserved cache token (admission's books balance).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_harness.h"
#include "grpc/health/v1/health.pb-c.h"
#include "tandem/v1/worker.pb-c.h"
#include "worker.h"

int td_mktiny_run(int argc, char **argv); /* tests/tools/mktiny.c */

enum { N_ROLES = 2, MAX_CALLS = 8, MAX_METHODS = 16, MAX_SEQS = 4, CTX = 64, MAX_ROWS = 16 };

static const fz_method k_methods[] = {
    {"/tandem.v1.Worker/Prefill", &tandem__v1__prefill_response__descriptor},
    {"/tandem.v1.Worker/Verify", &tandem__v1__verify_response__descriptor},
    {"/tandem.v1.Worker/Commit", &tandem__v1__commit_response__descriptor},
    {"/tandem.v1.Worker/Draft", &tandem__v1__draft_response__descriptor},
    {"/tandem.v1.Worker/Score", &tandem__v1__worker_score_response__descriptor},
    {"/tandem.v1.Worker/Release", &tandem__v1__release_response__descriptor},
    {"/tandem.v1.Worker/Stats", &tandem__v1__stats_response__descriptor},
    {"/tandem.v1.Worker/Describe", &tandem__v1__describe_response__descriptor},
    {"/grpc.health.v1.Health/Check", &grpc__health__v1__health_check_response__descriptor},
    {"/grpc.health.v1.Health/Watch", &grpc__health__v1__health_check_response__descriptor},
};
enum { N_METHODS = sizeof k_methods / sizeof k_methods[0] };

/* The process's fuzzing state, made once (libFuzzer runs inputs one after
 * another on one thread). */
static struct {
    td_worker_engine *engine[N_ROLES];
    td_net_server *server[N_ROLES];
    td_net_health *health;
} g_fz;

static void die(const char *what, const td_err *err) {
    fprintf(stderr, "fuzz_worker: %s: %s\n", what, err ? err->msg : "");
    exit(1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    td_log_setup("fuzz_worker", TD_LOG_ERROR);
    char dir[] = "/tmp/fuzz_worker.XXXXXX";
    if (!mkdtemp(dir)) die("mkdtemp", NULL);
    char path[64];
    snprintf(path, sizeof path, "%s/tiny.gguf", dir);
    /* the smallest shape td-mktiny makes (a pass costs little even under
     * the sanitizers), with its context of 64 */
    char *mk[] = {"td-mktiny", path, "--shape", "micro", NULL};
    if (td_mktiny_run(4, mk) != 0) die("td-mktiny", NULL);
    td_err err = {0};
    if (!(g_fz.health = td_net_health_create(&err))) die("health", &err);
    for (int r = 0; r < N_ROLES; r++) {
        td_worker_config cfg = {.role = r == 0 ? TD_WORKER_VERIFIER : TD_WORKER_DRAFTER, .model_path = path,
                                .threads = 1, .max_seqs = MAX_SEQS, .ctx = CTX, .max_rows = MAX_ROWS,
                                .prefill_chunk = 8, .idle_timeout = 3600, .numerics = TD_NUMERICS_FAST,
                                .batching = true, .prefix_cache = true};
        if (!(g_fz.engine[r] = td_worker_engine_create(&cfg, &err))) die("engine", &err);
        td_net_server_opts so = {.name = "worker", .max_message_bytes = 1 << 20};
        if (!(g_fz.server[r] = td_net_server_create(&so, &err)) || td_worker_rpc_register(g_fz.server[r], g_fz.engine[r], &err) ||
            td_net_health_add(g_fz.health, g_fz.server[r], &err))
            die("server", &err);
        td_net_method_info info[MAX_METHODS];
        size_t n = td_net_server_methods(g_fz.server[r], info, MAX_METHODS);
        if (n != N_METHODS) die("the worker registers other methods than this target knows", NULL);
        for (size_t i = 0; i < n; i++)
            if (strcmp(info[i].path, k_methods[i].path)) die(info[i].path, NULL);
    }
    td_net_health_set(g_fz.health, "", TD_NET_HEALTH_SERVING);
    td_net_health_set(g_fz.health, "tandem.v1.Worker", TD_NET_HEALTH_SERVING);
    /* the engines mapped the file: it can go now */
    unlink(path);
    rmdir(dir);
    return 0;
}

/* The seq field of a request that has one (its number, and the value in
 * msg when msg is given). */
static bool seq_field(const ProtobufCMessageDescriptor *d, uint32_t *id, const ProtobufCMessage *msg, uint64_t *v) {
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(d, "seq");
    if (!f || f->type != PROTOBUF_C_TYPE_UINT64) return false;
    if (id) *id = f->id;
    if (msg && v) memcpy(v, (const char *)msg + f->offset, sizeof *v);
    return true;
}

static void check_verify(const Tandem__V1__VerifyRequest *q, const Tandem__V1__VerifyResponse *r) {
    FZ_CHECK(r->n_nodes == q->n_tokens + 1);
    if (getenv("TD_FUZZ_VERBOSE")) { /* the samples, to write seeds whose drafts are accepted */
        fprintf(stderr, "  samples:");
        for (size_t i = 0; i < r->n_nodes; i++) fprintf(stderr, " %d", r->nodes[i]->sample);
        fprintf(stderr, "\n");
    }
    /* the path: tree node indices (0-based; nodes[i + 1] answers node i),
     * each a child of the one before, the first a child of the root (-1) */
    int32_t prev = -1;
    for (size_t i = 0; i < r->n_path; i++) {
        int32_t node = r->path[i];
        FZ_CHECK(node >= 0 && (size_t)node < q->n_tokens);
        FZ_CHECK(q->parents[node] == prev);
        prev = node;
    }
}

static void check_draft(const Tandem__V1__DraftRequest *q, const Tandem__V1__DraftResponse *r) {
    FZ_CHECK(r->n_tokens == r->n_parents && r->n_tokens <= (size_t)(q->max_nodes > 0 ? q->max_nodes : 0));
    for (size_t i = 0; i < r->n_parents; i++) FZ_CHECK(r->parents[i] >= -1 && r->parents[i] < (int32_t)i);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int role = data[0] & 1;
    td_net_server *srv = g_fz.server[role];
    uint64_t seqs[MAX_CALLS];
    size_t n_seqs = 0;
    size_t off = 1;
    for (int call = 0; call < MAX_CALLS && off < size; call++) {
        uint8_t mb = data[off++];
        size_t len = size - off;
        if (len >= 2) {
            size_t want = (size_t)data[off] | (size_t)data[off + 1] << 8;
            off += 2;
            len = size - off;
            if (want < len) len = want;
        } else {
            off = size;
            len = 0;
        }
        const fz_method *m = &k_methods[(mb & 15) % N_METHODS];
        const ProtobufCMessageDescriptor *req_type = NULL;
        td_net_method_info info[MAX_METHODS];
        size_t n = td_net_server_methods(srv, info, MAX_METHODS);
        for (size_t i = 0; i < n; i++)
            if (!strcmp(info[i].path, m->path)) req_type = info[i].type;
        FZ_CHECK(req_type);
        uint8_t *bytes = malloc(len + 24);
        FZ_CHECK(bytes);
        if (len) memcpy(bytes, data + off, len);
        off += len;
        uint32_t seq_id;
        if ((mb & 16) && seq_field(req_type, &seq_id, NULL, NULL))
            fz_append_varint_field(bytes, &len, seq_id, 1 + ((mb >> 5) & 1));
        /* Watch waits for changes until its client leaves: it runs with one
         * that is gone (or leaves after the first status) */
        bool watch = strstr(m->path, "/Watch") != NULL;
        fz_call_opts o = {.gone = (mb & 64) != 0, .expired = (mb & 128) != 0};
        if (watch && !o.gone && !o.expired) o.gone = true;
        fz_result r;
        fz_call(srv, m, bytes, len, &o, &r);
        /* the sequences this call named, released below */
        ProtobufCMessage *q = protobuf_c_message_unpack(req_type, NULL, len, len ? bytes : (const uint8_t *)"");
        uint64_t seq;
        if (q && seq_field(req_type, NULL, q, &seq) && n_seqs < MAX_CALLS) seqs[n_seqs++] = seq;
        if (q && r.code == TD_NET_OK && r.first && !r.client_left) {
            if (req_type == &tandem__v1__verify_request__descriptor)
                check_verify((const Tandem__V1__VerifyRequest *)q, (const Tandem__V1__VerifyResponse *)r.first);
            else if (req_type == &tandem__v1__draft_request__descriptor)
                check_draft((const Tandem__V1__DraftRequest *)q, (const Tandem__V1__DraftResponse *)r.first);
        }
        if (q) protobuf_c_message_free_unpacked(q, NULL);
        if (r.first) protobuf_c_message_free_unpacked(r.first, NULL);
        free(bytes);
    }
    /* every sequence named is released; then nothing may be left open */
    for (size_t i = 0; i < n_seqs; i++) {
        Tandem__V1__ReleaseRequest rq = TANDEM__V1__RELEASE_REQUEST__INIT;
        rq.request_id = "fuzz";
        rq.seq = seqs[i];
        uint8_t buf[64];
        size_t len = protobuf_c_message_pack(&rq.base, buf);
        fz_call_opts o = {0};
        fz_result r;
        fz_call(srv, &k_methods[5], buf, len, &o, &r);
        FZ_CHECK(r.code == TD_NET_OK);
        if (r.first) protobuf_c_message_free_unpacked(r.first, NULL);
    }
    td_worker_stats st;
    td_worker_engine_stats(g_fz.engine[role], &st);
    if (st.sequences != 0 || st.reserved_tokens != 0)
        fprintf(stderr, "fuzz_worker: after release: %d sequences, %lld tokens reserved\n", st.sequences,
                (long long)st.reserved_tokens);
    FZ_CHECK(st.sequences == 0 && st.reserved_tokens == 0);
    return 0;
}
