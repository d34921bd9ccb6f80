/* drafters.c — from a --draft string to live drafters; checks a draft
 * model's vocabulary against the target's before using it.
 */
#include <stdlib.h>
#include <string.h>

#include "drafters.h"

static int add(td_drafter_set *s, td_drafter *d, const char *what, const td_err *err) {
    if (!d) {
        fprintf(stderr, "tandem: cannot create the %s drafter: %s\n", what, err->msg);
        return 1;
    }
    if (s->n == TD_CLI_MAX_DRAFTERS) {
        td_drafter_destroy(d);
        fprintf(stderr, "tandem: --draft: at most %d drafters\n", TD_CLI_MAX_DRAFTERS);
        return 1;
    }
    s->d[s->n++] = d;
    return 0;
}

static int open_one(td_drafter_set *s, const char *name, size_t len, const td_engine *t,
                    const td_sample_params *sp, int32_t max_seqs, int32_t max_len) {
    const td_hparams *hp = td_model_hparams(t->model);
#define IS(lit) (len == strlen(lit) && memcmp(name, lit, len) == 0)
    td_err err = {0};
    if (IS("none")) return 0;
    if (IS("lookup")) return add(s, td_spec_lookup_create(1, 4, &err), "lookup", &err);
    if (IS("ngram")) return add(s, td_spec_ngram_create(4, max_seqs, &err), "ngram", &err);
    if (IS("recycle")) return add(s, td_spec_recycle_create_scoped(hp->n_vocab, 8, s->scope, &err), "recycle", &err);
    if (IS("auto")) {
        return open_one(s, "lookup", 6, t, sp, max_seqs, max_len) ||
               open_one(s, "recycle", 7, t, sp, max_seqs, max_len) ||
               open_one(s, "ngram", 5, t, sp, max_seqs, max_len);
    }
    if (len >= 9 && memcmp(name, "layerskip", 9) == 0) {
        uint8_t skip[256] = {0};
        const uint8_t *mask = NULL;
        if (len > 9) {
            char buf[32];
            int a, b;
            if (name[9] != ':' || len - 10 >= sizeof buf) goto bad;
            memcpy(buf, name + 10, len - 10);
            buf[len - 10] = 0;
            if (sscanf(buf, "%d-%d", &a, &b) != 2 || a < 0 || b < a || b >= hp->n_layer || hp->n_layer > 256) {
                fprintf(stderr, "tandem: --draft layerskip:A-B needs 0 <= A <= B < %d layers\n", hp->n_layer);
                return 1;
            }
            for (int l = a; l <= b; l++) skip[l] = 1;
            mask = skip;
        }
        td_drafter *d = td_spec_layerskip_create(t->model, t->pool, sp, max_seqs, max_len, mask, &err);
        return add(s, d, "layerskip", &err);
    }
    if (len > 6 && memcmp(name, "model:", 6) == 0) {
        if (s->has_draft_engine) {
            fprintf(stderr, "tandem: --draft: one draft model at most\n");
            return 1;
        }
        char *path = strndup(name + 6, len - 6);
        if (!path) return 1;
        int rc = td_cli_engine_open(&s->draft_engine, path, 1);
        free(path);
        if (rc) return 1;
        s->has_draft_engine = true;
        /* the draft model shares the target's thread pool */
        td_pool_destroy(s->draft_engine.pool);
        s->draft_engine.pool = NULL;
        if (td_tok_vocab_hash(s->draft_engine.tok) != td_tok_vocab_hash(t->tok)) {
            fprintf(stderr, "tandem: --draft model: its vocabulary differs from the target's (hash %016llx vs %016llx)\n",
                    (unsigned long long)td_tok_vocab_hash(s->draft_engine.tok),
                    (unsigned long long)td_tok_vocab_hash(t->tok));
            return 1;
        }
        td_drafter *d = td_spec_model_drafter_create(s->draft_engine.model, t->pool, sp, max_seqs, max_len, &err);
        return add(s, d, "model", &err);
    }
bad:
    fprintf(stderr, "tandem: --draft: unknown drafter '%.*s' (none, lookup, ngram, recycle, layerskip[:A-B], model:PATH, auto)\n",
            (int)len, name);
    return 1;
#undef IS
}

int td_cli_drafters_open(td_drafter_set *s, const char *spec, const td_engine *target,
                         const td_sample_params *sp, int32_t max_seqs, int32_t max_len, td_drafter_scope scope) {
    memset(s, 0, sizeof *s);
    s->scope = scope;
    for (const char *p = spec; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0 || open_one(s, p, len, target, sp, max_seqs, max_len)) {
            if (len == 0) fprintf(stderr, "tandem: --draft: empty drafter name\n");
            td_cli_drafters_close(s);
            return 1;
        }
        p = end ? end + 1 : p + len;
    }
    return 0;
}

void td_cli_drafters_close(td_drafter_set *s) {
    for (int32_t i = 0; i < s->n; i++) td_drafter_destroy(s->d[i]);
    s->n = 0;
    if (s->has_draft_engine) td_cli_engine_close(&s->draft_engine);
    s->has_draft_engine = false;
}
