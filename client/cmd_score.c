/* cmd_score.c — `tandem score`: batch scoring of a JSONL file through a
 * tandem cluster (tandem.v1.Inference/Score), resumable.
 *
 * Each input line is {"custom_id": ..., "prompt": ..., "continuation": ...}
 * (or prompt_ids / continuation_ids). Each result is one line of the output
 * file, written with a single write(2) as soon as its batch returns; an
 * item that cannot be scored becomes one line of the errors file instead.
 * On start, lines already in either file count as done (a torn last line
 * left by a crash is cut off first), so a job killed at any point and run
 * again ends with every item exactly once. --shard I/N takes every N-th
 * item, so N processes (a Kubernetes Indexed Job) split one file.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "net/net.h"
#include "score_input.h"
#include "tandem/v1/inference.pb-c.h"

static void usage(FILE *f) {
    fputs("usage: tandem score --server ADDR --in ITEMS.jsonl --out SCORES.jsonl [OPTIONS]\n"
          "\n"
          "Scores every item of ITEMS.jsonl: the log-probability of its continuation given its\n"
          "prompt, per token and summed. One JSON object per line in and out:\n"
          "  in:  {\"custom_id\": \"a1\", \"prompt\": \"The capital of France is\", \"continuation\": \" Paris\"}\n"
          "       (or \"prompt_ids\" / \"continuation_ids\": arrays of token ids)\n"
          "  out: {\"custom_id\": \"a1\", \"logprob_sum\": -0.71, \"token_count\": 1, \"all_greedy\": true,\n"
          "        \"tokens\": [{\"id\": 7042, \"logprob\": -0.71, \"greedy\": true}]}\n"
          "Resumable: items whose custom_id is already in the output (or errors) file are\n"
          "skipped; run the same command again after a crash or Ctrl-C.\n"
          "\n"
          "  --server ADDR        coordinator host:port (required)\n"
          "  --in PATH            input JSONL (required)\n"
          "  --out PATH           output JSONL, appended (required)\n"
          "  --errors PATH        items that could not be scored (default: OUT.errors.jsonl)\n"
          "  --concurrency N      requests in flight (default 4)\n"
          "  --batch N            items per request (default 8)\n"
          "  --top-k K            also report the K best alternatives per token (default 0)\n"
          "  --no-bos             do not prepend BOS to prompts\n"
          "  --shard I/N          score only items with index % N == I (0 <= I < N)\n"
          "  --timeout-ms MS      per request (default 600000)\n"
          "  --retries N          attempts per batch when the cluster is unavailable (default 5)\n"
          "  --tls-ca FILE        TLS to the server, its certificate checked against this CA (PEM)\n"
          "  --token-file FILE    bearer token (first line) for a server that wants one; default\n"
          "                       $TANDEM_TOKEN\n",
          f);
}

/* Reads a results file: every complete line's custom_id joins done; a torn
 * last line (no newline: the writer died mid-line) is cut off. Returns the
 * fd opened for appending, or -1. */
static int open_results(const char *path, td_score_ids *done, size_t *n_lines) {
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "tandem score: %s: %s\n", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) goto fail;
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    if (!buf) goto fail;
    size_t got = 0;
    while (got < size) {
        ssize_t r = pread(fd, buf + got, size - got, (off_t)got);
        if (r <= 0) { free(buf); goto fail; }
        got += (size_t)r;
    }
    size_t good = 0;
    if (td_score_results_scan(buf, size, done, n_lines, &good)) {
        free(buf);
        errno = ENOMEM;
        goto fail;
    }
    free(buf);
    if (good < size) {
        fprintf(stderr, "tandem score: %s: cutting a torn last line (%zu bytes) left by an interrupted run\n", path,
                size - good);
        if (ftruncate(fd, (off_t)good) != 0) goto fail;
    }
    if (lseek(fd, 0, SEEK_END) < 0) goto fail;
    return fd;
fail:
    fprintf(stderr, "tandem score: %s: %s\n", path, strerror(errno ? errno : EIO));
    close(fd);
    return -1;
}

/* ---- the job ---- */

typedef struct job {
    const char *server;
    td_net_channel *ch;
    td_cli_conn conn; /* TLS and the bearer token */
    td_score_item *items;
    size_t *queue, n_queue, next;  /* items still to score, in file order */
    int32_t batch, top_k, retries;
    bool add_bos;
    int64_t timeout_ms;
    int out_fd, err_fd;
    pthread_mutex_t mu;
    size_t done, failed, tokens;
    bool stop, fatal;
    char fatal_msg[512];
} job;

static int write_line(job *j, int fd, cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    if (!s) return -1;
    size_t n = strlen(s);
    char *line = malloc(n + 2);
    if (!line) { free(s); return -1; }
    memcpy(line, s, n);
    line[n] = '\n';
    free(s);
    /* one write per line: a crash leaves at most one torn line, cut on
     * resume. A write that fails part way (disk full) takes its part back,
     * so no torn line is ever followed by another. */
    off_t start = lseek(fd, 0, SEEK_CUR);
    size_t off = 0;
    while (off < n + 1) {
        ssize_t w = write(fd, line + off, n + 1 - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = w < 0 ? errno : ENOSPC;
            if (off > 0 && start >= 0 && ftruncate(fd, start) == 0) (void)lseek(fd, start, SEEK_SET);
            free(line);
            errno = e;
            return -1;
        }
        off += (size_t)w;
    }
    free(line);
    (void)j;
    return 0;
}

static void record_error(job *j, const char *id, const char *msg) {
    cJSON *o = cJSON_CreateObject();
    if (o && cJSON_AddStringToObject(o, "custom_id", id) && cJSON_AddStringToObject(o, "error", msg)) {
        pthread_mutex_lock(&j->mu);
        if (j->fatal) {
            /* stopped (disk full, cluster gone): write nothing more; a rerun does it */
        } else if (write_line(j, j->err_fd, o) != 0) {
            j->fatal = true;
            snprintf(j->fatal_msg, sizeof j->fatal_msg, "cannot write the errors file: %s", strerror(errno));
        } else {
            j->failed++;
        }
        pthread_mutex_unlock(&j->mu);
    }
    cJSON_Delete(o);
}

/* Scores the items idx[0..n): 0, or the gRPC code of a failure that a retry
 * might cure (UNAVAILABLE and friends); per-item problems are recorded. */
static int score_batch(job *j, const size_t *idx, size_t n, td_net_status *st) {
    Tandem__V1__ScoreItem *it = calloc(n, sizeof *it);
    Tandem__V1__ScoreItem **itp = calloc(n, sizeof *itp);
    int32_t **owned = calloc(2 * n, sizeof *owned);
    int code = TD_NET_RESOURCE_EXHAUSTED;
    if (!it || !itp || !owned) goto out;
    for (size_t k = 0; k < n; k++) {
        tandem__v1__score_item__init(&it[k]);
        if (!td_score_item_fill(&j->items[idx[k]], &it[k], &owned[2 * k], &owned[2 * k + 1])) goto out;
        itp[k] = &it[k];
    }
    Tandem__V1__ScoreRequest q = TANDEM__V1__SCORE_REQUEST__INIT;
    q.n_items = n;
    q.items = itp;
    q.top_k = j->top_k;
    q.add_bos = j->add_bos;
    ProtobufCMessage *m = NULL;
    code = td_net_unary(j->ch, "/tandem.v1.Inference/Score", &q.base, &tandem__v1__score_response__descriptor, &m,
                        j->timeout_ms, td_cli_conn_md(&j->conn), j->conn.n_md, st);
    if (code != TD_NET_OK) goto out;
    const Tandem__V1__ScoreResponse *r = (const Tandem__V1__ScoreResponse *)m;
    for (size_t k = 0; k < n && k < r->n_results; k++) {
        const Tandem__V1__ScoreResult *x = r->results[k];
        if (x->error[0]) {
            record_error(j, j->items[idx[k]].id, x->error);
            continue;
        }
        cJSON *o = cJSON_CreateObject(), *toks = cJSON_CreateArray();
        bool ok = o && toks && cJSON_AddStringToObject(o, "custom_id", j->items[idx[k]].id) &&
                  cJSON_AddNumberToObject(o, "logprob_sum", x->logprob_sum) &&
                  cJSON_AddNumberToObject(o, "token_count", x->token_count) &&
                  cJSON_AddBoolToObject(o, "all_greedy", x->all_greedy);
        for (size_t t = 0; ok && t < x->n_tokens; t++) {
            cJSON *e = cJSON_CreateObject();
            ok = e && cJSON_AddItemToArray(toks, e) && cJSON_AddNumberToObject(e, "id", x->tokens[t]->id) &&
                 cJSON_AddNumberToObject(e, "logprob", x->tokens[t]->logprob) &&
                 cJSON_AddBoolToObject(e, "greedy", x->tokens[t]->greedy);
            if (ok && x->tokens[t]->n_top) {
                cJSON *top = cJSON_CreateArray();
                ok = top && cJSON_AddItemToObject(e, "top", top);
                for (size_t a = 0; ok && a < x->tokens[t]->n_top; a++) {
                    cJSON *alt = cJSON_CreateObject();
                    ok = alt && cJSON_AddItemToArray(top, alt) &&
                         cJSON_AddNumberToObject(alt, "id", x->tokens[t]->top[a]->id) &&
                         cJSON_AddNumberToObject(alt, "logprob", x->tokens[t]->top[a]->logprob);
                }
            }
        }
        if (ok) {
            cJSON_AddItemToObject(o, "tokens", toks);
            toks = NULL;
        }
        pthread_mutex_lock(&j->mu);
        if (j->fatal) {
            /* stopped: write nothing more (keeps the first error's message) */
        } else if (!ok || write_line(j, j->out_fd, o) != 0) {
            j->fatal = true;
            snprintf(j->fatal_msg, sizeof j->fatal_msg, "cannot write the output file: %s", strerror(errno ? errno : ENOMEM));
        } else {
            j->done++;
            j->tokens += x->n_tokens;
        }
        pthread_mutex_unlock(&j->mu);
        cJSON_Delete(toks);
        cJSON_Delete(o);
    }
    if (r->n_results != n) {
        code = TD_NET_INTERNAL;
        snprintf(st->msg, sizeof st->msg, "the server answered %zu results for %zu items", r->n_results, n);
    }
    protobuf_c_message_free_unpacked(m, NULL);
out:
    if (owned)
        for (size_t k = 0; k < 2 * n; k++) free(owned[k]);
    free(owned);
    free(it);
    free(itp);
    return code;
}

static bool retryable(int code) {
    return code == TD_NET_UNAVAILABLE || code == TD_NET_DEADLINE_EXCEEDED || code == TD_NET_RESOURCE_EXHAUSTED ||
           code == TD_NET_INTERNAL || code == TD_NET_UNKNOWN || code == TD_NET_ABORTED;
}

static void *worker(void *arg) {
    job *j = arg;
    size_t idx[256];
    for (;;) {
        pthread_mutex_lock(&j->mu);
        size_t n = 0;
        if (!j->stop && !j->fatal)
            while (n < (size_t)j->batch && j->next < j->n_queue) idx[n++] = j->queue[j->next++];
        pthread_mutex_unlock(&j->mu);
        if (n == 0) break;
        td_net_status st = {0};
        int code = TD_NET_OK;
        for (int a = 0; a <= j->retries; a++) {
            code = score_batch(j, idx, n, &st);
            if (code == TD_NET_OK || !retryable(code)) break;
            fprintf(stderr, "\ntandem score: batch of %zu items: %s: %s (attempt %d of %d)\n", n, td_net_code_name(code), st.msg,
                    a + 1, j->retries + 1);
            usleep((useconds_t)(200000u << (a < 5 ? a : 5)));
        }
        if (code != TD_NET_OK) {
            /* a refused token is no item's fault: recording every item as an
             * error would make a rerun skip them all */
            if (retryable(code) || code == TD_NET_UNAUTHENTICATED || code == TD_NET_PERMISSION_DENIED) {
                /* the cluster is gone (or refuses us): stop, a rerun continues */
                pthread_mutex_lock(&j->mu);
                j->fatal = true;
                snprintf(j->fatal_msg, sizeof j->fatal_msg, "%s: %s: %s", j->server, td_net_code_name(code), st.msg);
                pthread_mutex_unlock(&j->mu);
                break;
            }
            /* the request itself was refused: score the items one by one so
             * that only the bad ones become errors */
            for (size_t k = 0; k < n; k++) {
                if (n > 1 && score_batch(j, &idx[k], 1, &st) == TD_NET_OK) continue;
                record_error(j, j->items[idx[k]].id, st.msg);
            }
        }
    }
    return NULL;
}

int td_cmd_score(int argc, char **argv) {
    const char *cmd = "score", *server = NULL, *in = NULL, *out = NULL, *errors = NULL;
    long concurrency = 4, batch = 8, top_k = 0, shard_i = 0, shard_n = 1, timeout = 600000, retries = 5;
    bool add_bos = true;
    job j = {.out_fd = -1, .err_fd = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        if (!strcmp(a, "--no-bos")) { add_bos = false; continue; }
        if (!(v = td_cli_value(cmd, argc, argv, &i))) return 2;
        if (!strcmp(a, "--server")) server = v;
        else if (!strcmp(a, "--tls-ca")) j.conn.tls_ca = v;
        else if (!strcmp(a, "--token-file")) j.conn.token_file = v;
        else if (!strcmp(a, "--in")) in = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--errors")) errors = v;
        else if (!strcmp(a, "--concurrency")) { if (!td_cli_int(cmd, a, v, 1, 256, &concurrency)) return 2; }
        else if (!strcmp(a, "--batch")) { if (!td_cli_int(cmd, a, v, 1, 256, &batch)) return 2; }
        else if (!strcmp(a, "--top-k")) { if (!td_cli_int(cmd, a, v, 0, 20, &top_k)) return 2; }
        else if (!strcmp(a, "--timeout-ms")) { if (!td_cli_int(cmd, a, v, 1, 1L << 40, &timeout)) return 2; }
        else if (!strcmp(a, "--retries")) { if (!td_cli_int(cmd, a, v, 0, 100, &retries)) return 2; }
        else if (!strcmp(a, "--shard")) {
            char *end;
            shard_i = strtol(v, &end, 10);
            if (*end != '/' || (shard_n = strtol(end + 1, &end, 10)) < 1 || *end || shard_i < 0 || shard_i >= shard_n) {
                fprintf(stderr, "tandem score: --shard I/N with 0 <= I < N (got \"%s\")\n", v);
                return 2;
            }
        } else { fprintf(stderr, "tandem score: unknown option '%s'\n", a); usage(stderr); return 2; }
    }
    if (!server || !in || !out) { fprintf(stderr, "tandem score: --server, --in and --out are required\n"); usage(stderr); return 2; }
    char errors_buf[4096];
    if (!errors) {
        snprintf(errors_buf, sizeof errors_buf, "%s.errors.jsonl", out);
        errors = errors_buf;
    }
    size_t text_len = 0;
    char *text = td_cli_read_file(cmd, in, &text_len);
    if (!text) return 1;

    int status = 1;
    td_score_ids done = {0};
    td_score_items parsed = {0};
    j.server = server;
    j.batch = (int32_t)batch;
    j.top_k = (int32_t)top_k;
    j.retries = (int32_t)retries;
    j.add_bos = add_bos;
    j.timeout_ms = timeout;
    pthread_mutex_init(&j.mu, NULL);
    size_t n_items = 0, prev_out = 0, prev_err = 0, skipped = 0;
    pthread_t th[256];
    int n_th = 0;
    if ((j.out_fd = open_results(out, &done, &prev_out)) < 0 || (j.err_fd = open_results(errors, &done, &prev_err)) < 0)
        goto cleanup;
    /* the items of this shard, minus those already done */
    if (td_score_input_parse(text, text_len, (size_t)shard_i, (size_t)shard_n, &done, &parsed)) goto nomem;
    j.items = parsed.v;
    n_items = parsed.n;
    skipped = parsed.skipped;
    j.queue = malloc((n_items ? n_items : 1) * sizeof *j.queue);
    if (!j.queue) goto nomem;
    for (size_t i = 0; i < n_items; i++) {
        if (j.items[i].error) record_error(&j, j.items[i].id, j.items[i].error);
        else j.queue[j.n_queue++] = i;
    }
    if (skipped)
        fprintf(stderr, "tandem score: resuming: %zu items already done (%zu result and %zu error lines)\n", skipped,
                prev_out, prev_err);
    if (!(j.ch = td_cli_conn_open(cmd, &j.conn, server, NULL))) goto cleanup;

    td_net_signals_block(); /* Ctrl-C: finish the batches in flight, write them, stop */
    for (long k = 0; k < concurrency; k++)
        if (pthread_create(&th[n_th], NULL, worker, &j) == 0) n_th++;
    bool tty = isatty(STDERR_FILENO);
    double t0 = td_now_sec(), last_print = t0;
    int sig = 0;
    for (;;) {
        pthread_mutex_lock(&j.mu);
        size_t d = j.done + j.failed, next = j.next;
        bool finished = (next >= j.n_queue || j.fatal || j.stop);
        pthread_mutex_unlock(&j.mu);
        double now = td_now_sec(), rate = (double)d / (now - t0 > 1e-3 ? now - t0 : 1e-3);
        size_t total = n_items;
        if (tty || now - last_print >= 5.0) {
            double eta = rate > 0 ? (double)(total - (d < total ? d : total)) / rate : 0;
            fprintf(stderr, "%s[score] %zu/%zu items  %.1f items/s  ETA %dm%02ds%s", tty ? "\r" : "", d, total, rate,
                    (int)eta / 60, (int)eta % 60, tty ? "   " : "\n");
            last_print = now;
        }
        if (finished && next >= j.n_queue) break;
        if (finished) break;
        if ((sig = td_net_signals_wait(200))) {
            fprintf(stderr, "\ntandem score: signal %d: finishing the requests in flight, then stopping\n", sig);
            pthread_mutex_lock(&j.mu);
            j.stop = true;
            pthread_mutex_unlock(&j.mu);
            break;
        }
    }
    for (int k = 0; k < n_th; k++) pthread_join(th[k], NULL);
    fdatasync(j.out_fd);
    fdatasync(j.err_fd);
    double dt = td_now_sec() - t0;
    fprintf(stderr, "%s[score] done: %zu scored, %zu errors, %zu skipped as already done; %zu tokens in %.1f s (%.0f tokens/s)\n",
            tty ? "\n" : "", j.done, j.failed, skipped, j.tokens, dt, dt > 0 ? (double)j.tokens / dt : 0.0);
    if (j.fatal) fprintf(stderr, "tandem score: stopped: %s (run the same command again to continue)\n", j.fatal_msg);
    status = j.fatal ? 1 : sig ? 130 : j.failed ? 1 : 0;
    if (!j.fatal && !sig && j.failed) fprintf(stderr, "tandem score: %zu items failed: see %s\n", j.failed, errors);
    goto cleanup;
nomem:
    fprintf(stderr, "tandem score: out of memory\n");
cleanup:
    td_score_items_free(&parsed); /* j.items is parsed.v */
    free(j.queue);
    td_net_channel_close(j.ch);
    td_cli_conn_close(&j.conn);
    if (j.out_fd >= 0) close(j.out_fd);
    if (j.err_fd >= 0) close(j.err_fd);
    td_score_ids_free(&done);
    pthread_mutex_destroy(&j.mu);
    free(text);
    return status;
}
