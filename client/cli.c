/* cli.c — shared plumbing of the tandem CLI: default model location, engine
 * start-up with one-line errors, and strict numeric option parsing.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

const char *td_cli_default_model(char *buf, size_t cap) {
    const char *env = getenv("TANDEM_MODEL");
    if (env && *env) return env;
    const char *cache = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    if (cache && *cache)
        snprintf(buf, cap, "%s/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
    else
        snprintf(buf, cap, "%s/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : ".");
    return buf;
}

int td_cli_engine_open(td_engine *e, const char *path, int n_threads) {
    return td_cli_engine_open_tp(e, path, n_threads, 1, "mpi");
}

bool td_cli_tp_comm(const char *cmd, const char *val, td_device dev, const char **out) {
    if (strcmp(val, "mpi") != 0 && strcmp(val, "nccl") != 0) {
        fprintf(stderr, "tandem %s: --tp-comm expects 'mpi' or 'nccl', got '%s'\n", cmd, val);
        return false;
    }
    if (!strcmp(val, "nccl") && dev.kind != TD_DEVICE_CUDA) {
        fprintf(stderr, "tandem %s: --tp-comm nccl carries device buffers: it needs --device cuda\n", cmd);
        return false;
    }
    *out = val;
    return true;
}

int td_cli_engine_open_tp(td_engine *e, const char *path, int n_threads, int tp, const char *tp_comm) {
    memset(e, 0, sizeof *e);
    td_err err = {0};
    if (tp > 1) {
        if (!td_comm_launched()) {
            fprintf(stderr, "tandem: --tp %d runs as %d processes: start it with mpirun -np %d\n", tp, tp, tp);
            return 1;
        }
        if (!(e->comm = td_comm_open(tp_comm, &err))) {
            fprintf(stderr, "tandem: --tp %d: %s\n", tp, err.msg);
            return 1;
        }
        if (td_comm_size(e->comm) != tp) {
            fprintf(stderr, "tandem: --tp %d, but mpirun started %d processes\n", tp, td_comm_size(e->comm));
            goto fail;
        }
    }
    int rc = td_gguf_open(path, &e->gguf, &err);
    if (rc) {
        fprintf(stderr, "tandem: %s: %s\n", path, err.msg);
        /* the hint only helps when the default was used: a user who named
         * a file needs no advice to name one */
        char def[1024];
        if (rc == TD_E_IO && !strcmp(path, td_cli_default_model(def, sizeof def)))
            fprintf(stderr, "tandem: run scripts/setup.sh to fetch the default model, or pass --model PATH\n");
        goto fail;
    }
    if ((rc = td_model_load_shard(e->gguf, td_comm_rank(e->comm), td_comm_size(e->comm), &e->model, &err))) {
        fprintf(stderr, "tandem: %s: %s\n", path, err.msg);
        goto fail;
    }
    if ((rc = td_tok_create(e->gguf, &e->tok, &err))) {
        fprintf(stderr, "tandem: %s: tokenizer: %s\n", path, err.msg);
        goto fail;
    }
    if (td_tok_vocab_size(e->tok) > td_model_hparams(e->model)->n_vocab) {
        fprintf(stderr, "tandem: %s: tokenizer has %d tokens but the model only %d rows\n", path,
                td_tok_vocab_size(e->tok), td_model_hparams(e->model)->n_vocab);
        goto fail;
    }
    e->n_threads = n_threads > 0 ? n_threads : td_cpu_count();
    e->pool = td_pool_create(e->n_threads, &err);
    if (!e->pool) {
        fprintf(stderr, "tandem: cannot start %d threads: %s\n", e->n_threads, err.msg);
        goto fail;
    }
    return 0;
fail:
    td_cli_engine_close(e);
    return 1;
}

void td_cli_engine_close(td_engine *e) {
    td_pool_destroy(e->pool);
    td_tok_destroy(e->tok);
    td_model_free(e->model);
    td_gguf_close(e->gguf);
    td_comm_close(e->comm);
    memset(e, 0, sizeof *e);
}

bool td_cli_int(const char *cmd, const char *opt, const char *val, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno || *end || end == val || v < lo || v > hi) {
        fprintf(stderr, "tandem %s: %s expects an integer in [%ld, %ld], got '%s'\n", cmd, opt, lo, hi, val);
        return false;
    }
    *out = v;
    return true;
}

bool td_cli_u64(const char *cmd, const char *opt, const char *val, uint64_t *out) {
    char *end;
    errno = 0;
    /* strtoull accepts "-1" (and wraps it) and leading blanks: only digits */
    bool digits = val[0] >= '0' && val[0] <= '9';
    unsigned long long v = strtoull(val, &end, 10);
    if (!digits || errno || *end) {
        fprintf(stderr, "tandem %s: %s expects an integer in [0, %llu], got '%s'\n", cmd, opt,
                (unsigned long long)UINT64_MAX, val);
        return false;
    }
    *out = (uint64_t)v;
    return true;
}

bool td_cli_float(const char *cmd, const char *opt, const char *val, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (errno || *end || end == val || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "tandem %s: %s expects a number in [%g, %g], got '%s'\n", cmd, opt, lo, hi, val);
        return false;
    }
    *out = v;
    return true;
}

bool td_cli_numerics(const char *cmd, const char *val, td_numerics *out) {
    if (!strcmp(val, "reference")) *out = TD_NUMERICS_REFERENCE;
    else if (!strcmp(val, "fast")) *out = TD_NUMERICS_FAST;
    else if (!strcmp(val, "llamacpp")) *out = TD_NUMERICS_LLAMACPP;
    else if (!strcmp(val, "tp-invariant")) *out = TD_NUMERICS_TP_INVARIANT;
    else {
        fprintf(stderr, "tandem %s: --numerics expects 'reference', 'fast', 'llamacpp' or 'tp-invariant', got '%s'\n",
                cmd, val);
        return false;
    }
    return true;
}

bool td_cli_numerics_allow_speculation(const char *cmd, td_numerics order) {
    if (order != TD_NUMERICS_LLAMACPP) return true;
    fprintf(stderr,
            "tandem %s: --draft needs --numerics reference or fast: llamacpp copies llama.cpp's one-token\n"
            "attention, which differs from a batch's, so a verification pass could not reproduce plain\n"
            "decoding bit for bit\n", cmd);
    return false;
}

const char *td_cli_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "tandem %s: %s needs a value\n", cmd, argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

char *td_cli_read_file(const char *cmd, const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "tandem %s: cannot open %s: %s\n", cmd, path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    bool failed = ferror(f);
    fclose(f);
    if (!buf || failed) {
        free(buf);
        fprintf(stderr, "tandem %s: cannot read %s\n", cmd, path);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

bool td_cli_device(const char *cmd, const char *val, td_device *out) {
    td_err err = {0};
    if (td_device_parse(val, out, &err) == TD_OK) return true;
    fprintf(stderr, "tandem %s: --device: %s\n", cmd, err.msg);
    return false;
}

bool td_cli_device_numerics(const char *cmd, td_device dev, bool numerics_given, td_numerics *numerics) {
    if (dev.kind != TD_DEVICE_CUDA) return true;
    if (!numerics_given) *numerics = TD_NUMERICS_REFERENCE; /* the device's default: the CPU's bits */
    if (*numerics == TD_NUMERICS_LLAMACPP) {
        fprintf(stderr, "tandem %s: --device cuda computes --numerics reference, fast or tp-invariant (got %s)\n",
                cmd, td_numerics_name(*numerics));
        return false;
    }
    return true;
}

td_ctx *td_cli_ctx(const char *cmd, const td_engine *e, int32_t max_rows, td_pool *pool, td_device dev,
                   td_numerics numerics) {
    td_err err = {0};
    td_ctx *ctx = td_ctx_create_on(e->model, max_rows, pool, dev, &err);
    if (!ctx) {
        char name[32];
        td_device_format(dev, name, sizeof name);
        fprintf(stderr, "tandem %s: cannot run on %s: %s\n", cmd, name, err.msg);
        return NULL;
    }
    td_ctx_set_numerics(ctx, numerics);
    if (e->comm && td_ctx_set_comm(ctx, e->comm, &err) != TD_OK) {
        fprintf(stderr, "tandem %s: %s\n", cmd, err.msg);
        td_ctx_destroy(ctx);
        return NULL;
    }
    return ctx;
}

/* Length of the well-formed UTF-8 sequence at s[0..n) (shortest form, no
 * surrogates, at most U+10FFFF), or 0 when it is not one. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (len == 0 || len > n) return 0;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[k] & 0x3F);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

/* A crafted model file could put terminal escape sequences or fake lines in
 * any string: see td_cli_print_escaped in cli.h. */
size_t td_cli_print_escaped(FILE *f, const char *text, size_t n, size_t max) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < n) {
        size_t len = utf8_seq(s + i, n - i);
        if (i + (len ? len : 1) > max) break;
        unsigned c = s[i];
        if (len == 0) fprintf(f, "\\x%02X", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20 || c == 0x7F) fprintf(f, "\\x%02X", c);
        else if (len == 2 && c == 0xC2 && s[i + 1] < 0xA0) fprintf(f, "\\u%04X", s[i + 1]); /* C1 control */
        else fwrite(s + i, 1, len, f);
        i += len ? len : 1;
    }
    return i;
}
