/* cli.h — what the tandem CLI's subcommands share: option parsing helpers,
 * the loaded engine (file, model, tokenizer, thread pool) and error output.
 * Only client/ code includes this; library modules never print or exit.
 */
#ifndef TD_CLI_H
#define TD_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "gguf/gguf.h"
#include "model/model.h"
#include "net/net.h"
#include "sample/sample.h"
#include "tok/tok.h"
#include "util/util.h"

/* Default model path: $TANDEM_MODEL, else the set-up script's cache. */
const char *td_cli_default_model(char *buf, size_t cap);

typedef struct td_engine {
    td_gguf *gguf;
    td_model *model;
    td_tok *tok;
    td_pool *pool;
    int n_threads;
    td_comm *comm; /* a tensor-parallel group (td_cli_engine_open_tp), else NULL */
} td_engine;

/* Opens the GGUF, builds model and tokenizer, starts the pool. Prints one
 * error line and returns non-zero on failure. */
int td_cli_engine_open(td_engine *e, const char *path, int n_threads);
/* The same as one rank of a tensor-parallel group of tp processes started
 * by mpirun (tp > 1): joins the group over tp_comm ("mpi" or "nccl") and
 * loads this rank's shard. */
int td_cli_engine_open_tp(td_engine *e, const char *path, int n_threads, int tp, const char *tp_comm);
/* --tp-comm's value: "mpi" or "nccl" (which needs a CUDA device). */
bool td_cli_tp_comm(const char *cmd, const char *val, td_device dev, const char **out);
#define TD_CLI_TP_COMM_HELP \
    "  --tp-comm NAME        the group's transport: mpi (default; host memory) or nccl\n" \
    "                        (GPU to GPU; with --device cuda)\n"
void td_cli_engine_close(td_engine *e);

/* Argument parsing: every parser prints "tandem CMD: ..." and returns false
 * on bad input. */
bool td_cli_int(const char *cmd, const char *opt, const char *val, long lo, long hi, long *out);
/* A non-negative integer up to 2^64-1 (seeds): digits only, no wrap-around. */
bool td_cli_u64(const char *cmd, const char *opt, const char *val, uint64_t *out);
bool td_cli_float(const char *cmd, const char *opt, const char *val, double lo, double hi, double *out);
/* Returns the value of an option taking one argument, advancing *i. */
const char *td_cli_value(const char *cmd, int argc, char **argv, int *i);
/* --numerics reference|fast|llamacpp; prints the error and returns false otherwise. */
bool td_cli_numerics(const char *cmd, const char *val, td_numerics *out);
/* Speculation needs batch-invariant numerics; llamacpp order is not (a
 * one-row pass takes llama.cpp's one-token attention). Prints why and
 * returns false for that combination. */
bool td_cli_numerics_allow_speculation(const char *cmd, td_numerics order);
#define TD_CLI_NUMERICS_HELP \
    "  --numerics MODE       fast (default): column-wise matmul kernels, cheapest passes over\n" \
    "                        many rows (prefill, speculative verification); reference:\n" \
    "                        llama.cpp's summation order, so logits of a batch (prefill,\n" \
    "                        scoring) are bit-identical to its CPU build's on Q4_1/Q8_0\n" \
    "                        models (prefill about 1.8x slower); llamacpp: reference,\n" \
    "                        plus llama.cpp's other attention order for one-token passes,\n" \
    "                        so token-by-token decoding carries its bits too (not batch\n" \
    "                        invariant, hence no --draft). fast and reference are batch\n" \
    "                        invariant: a row's logits never depend on its batch;\n" \
    "                        tp-invariant: fast's kernels, with the projections a tensor-\n" \
    "                        parallel split cuts summed in fixed chunks, so --tp N gives\n" \
    "                        the logits of --tp 1 bit for bit (also batch invariant)\n"

/* --device cpu|cuda|cuda:N; prints the error and returns false otherwise. */
bool td_cli_device(const char *cmd, const char *val, td_device *out);
/* CUDA computes the reference order (its default there) or its own fast
 * order: with --device cuda the default becomes reference, and llamacpp or
 * tp-invariant is refused. */
bool td_cli_device_numerics(const char *cmd, td_device dev, bool numerics_given, td_numerics *numerics);
/* Creates the pass context on the device, printing why not on failure. */
td_ctx *td_cli_ctx(const char *cmd, const td_engine *e, int32_t max_rows, td_pool *pool, td_device dev,
                   td_numerics numerics);
#define TD_CLI_DEVICE_HELP \
    "  --device DEV          cpu (default) or cuda[:N]: run the model on a CUDA GPU (a build\n" \
    "                        with -DTANDEM_CUDA=ON; Q4_0/Q4_1/Q8_0 weights). The GPU computes\n" \
    "                        the reference order by default, so its logits equal --numerics\n" \
    "                        reference's on the CPU; with --numerics fast, its own order\n" \
    "                        (wide rows split between warps, added in a fixed order: batch\n" \
    "                        invariant, close to reference, not its bits; faster on wide\n" \
    "                        models); with --numerics tp-invariant, wo's and w_down's\n" \
    "                        chunks added in a fixed order, so --tp N gives --tp 1's bits\n" \
    "                        (the GPU's own, not the CPU's tp-invariant bits). Under\n" \
    "                        mpirun, cuda without :N picks GPU (local rank mod GPUs)\n"
/* Prints text that came from a model file (metadata strings, tensor names,
 * token pieces), where a crafted file could put terminal escape sequences or
 * fake lines: C0 and C1 controls, DEL, quotes, backslashes and bytes that are
 * not well-formed UTF-8 come out as escapes (\n, \x1B, \u009B, ...), other
 * characters as they are. At most max source bytes, whole characters only;
 * returns the bytes consumed. */
size_t td_cli_print_escaped(FILE *f, const char *text, size_t n, size_t max);

/* Reads a whole file into a NUL-terminated malloc'd buffer. */
char *td_cli_read_file(const char *cmd, const char *path, size_t *len);

int td_cmd_generate(int argc, char **argv);
int td_cmd_tokenize(int argc, char **argv);
int td_cmd_info(int argc, char **argv);
int td_cmd_perplexity(int argc, char **argv);
int td_cmd_bench(int argc, char **argv);
int td_cmd_bench_spec(int argc, char **argv);
int td_cmd_bench_kernels(int argc, char **argv);
/* bench_measure.c: the median of n timings (sorts v); read bandwidth in
 * bytes/s over buf on the pool's threads (median of 5 sweeps). */
double td_bench_median(double *v, int n);
double td_bench_read_bandwidth(td_pool *pool, const uint64_t *buf, size_t bytes);
int td_cmd_health(int argc, char **argv);
int td_cmd_score(int argc, char **argv);

/* Reaching a tandem server (cli_conn.c): the options --tls-ca FILE (TLS,
 * the server's certificate checked against this CA; default plaintext) and
 * --token-file FILE (else $TANDEM_TOKEN: a bearer token sent with every
 * call). */
typedef struct td_cli_conn {
    const char *tls_ca, *token_file; /* the options as given */
    /* set by open: */
    char *bearer; /* "Bearer <token>" */
    td_net_metadata md;
    size_t n_md;
} td_cli_conn;
/* The channel (base may be NULL), with the token loaded; prints the error
 * and returns NULL on failure. td_cli_conn_close after the channel. */
td_net_channel *td_cli_conn_open(const char *cmd, td_cli_conn *c, const char *server,
                                 const td_net_channel_opts *base);
/* The metadata to pass with each call (NULL when no token); count n_md. */
const td_net_metadata *td_cli_conn_md(const td_cli_conn *c);
void td_cli_conn_close(td_cli_conn *c);

/* `tandem generate --server ADDR` (remote_generate.c): the same request sent
 * to a tandem coordinator; streams text to stdout, the summary to stderr. */
typedef struct td_cli_remote_gen {
    const char *server;
    const char *prompt;      /* UTF-8, NUL-terminated */
    const char *system;
    bool chat, parse_special, ignore_eos;
    int32_t max_tokens;
    td_sample_params sample;
    bool seed_given;
    const char *const *stop;
    size_t n_stop;
    const char *draft;       /* the --draft list as given */
    int32_t draft_max, draft_min;
    bool draft_fixed;
    int32_t logprobs;        /* print per-token logprobs to stderr (0 = no) */
    int64_t deadline_ms;     /* 0 = none */
    const char *request_id;
    const char *tls_ca, *token_file; /* td_cli_conn's options */
} td_cli_remote_gen;
int td_cli_remote_generate(const td_cli_remote_gen *g);

#endif
