/* cmd_info.c — `tandem info PATH`: architecture, hyper-parameters, tensor
 * types, vocabulary and the file's sha256; --all also lists every key.
 */
#include <string.h>

#include "cli.h"
#include "quant/quant.h"

static void print_str(const char *s, size_t n) { td_cli_print_escaped(stdout, s, n, n); }

static void print_kv(const td_gguf_kv *kv) {
    const char *s;
    size_t n;
    int64_t i;
    double f;
    printf("  ");
    const char *key = td_gguf_kv_key(kv);
    print_str(key, strlen(key));
    printf(" = ");
    if (td_gguf_kv_type(kv) == TD_GGUF_ARRAY) {
        printf("[array of %llu]", (unsigned long long)td_gguf_arr_len(kv));
    } else if (td_gguf_kv_str(kv, &s, &n)) {
        putchar('"');
        size_t shown = td_cli_print_escaped(stdout, s, n, 120);
        putchar('"');
        if (shown < n) printf("... (%zu bytes)", n);
    } else if (td_gguf_kv_type(kv) == TD_GGUF_F32 || td_gguf_kv_type(kv) == TD_GGUF_F64) {
        if (td_gguf_kv_f64(kv, &f)) printf("%g", f);
    } else if (td_gguf_kv_i64(kv, &i)) {
        printf("%lld", (long long)i);
    }
    printf("\n");
}

int td_cmd_info(int argc, char **argv) {
    const char *path = NULL;
    bool all = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            puts("usage: tandem info [--all] [PATH]\n\n"
                 "Describes a GGUF model: architecture, hyper-parameters, tensor types,\n"
                 "vocabulary size and sha256. --all lists every metadata key.\n"
                 "PATH defaults to the default model.");
            return 0;
        } else if (!strcmp(argv[i], "--all")) all = true;
        else if (!strcmp(argv[i], "--model") && i + 1 < argc) path = argv[++i];
        else if (argv[i][0] == '-') { fprintf(stderr, "tandem info: unknown option '%s'\n", argv[i]); return 2; }
        else path = argv[i];
    }
    char buf[1024];
    if (!path) path = td_cli_default_model(buf, sizeof buf);
    td_engine e;
    if (td_cli_engine_open(&e, path, 1)) return 1;
    const td_hparams *hp = td_model_hparams(e.model);
    char sha[65];
    td_sha256_hex(td_gguf_file_data(e.gguf), td_gguf_file_size(e.gguf), sha);
    printf("file:           %s\n", path);
    printf("size:           %zu bytes, GGUF v%u, %zu tensors, %zu metadata keys\n", td_gguf_file_size(e.gguf),
           td_gguf_version(e.gguf), td_gguf_tensor_count(e.gguf), td_gguf_kv_count(e.gguf));
    printf("sha256:         %s\n", sha);
    printf("architecture:   ");
    print_str(hp->arch, strlen(hp->arch));
    printf("\n");
    printf("layers:         %d\n", hp->n_layer);
    printf("embedding:      %d\n", hp->n_embd);
    printf("feed-forward:   %d\n", hp->n_ff);
    printf("heads:          %d (kv heads %d, head dim %d)\n", hp->n_head, hp->n_head_kv, hp->head_dim);
    printf("rope:           %s, %d dims, base %g, freq scale %g\n", hp->rope_kind == TD_ROPE_NEOX ? "neox" : "normal",
           hp->n_rot, (double)hp->rope_base, (double)hp->rope_freq_scale);
    printf("rms eps:        %g\n", (double)hp->rms_eps);
    printf("context:        %d (trained)\n", hp->n_ctx_train);
    printf("vocabulary:     %d tokens (model rows %d), bos %d, eos %d, vocab hash %016llx\n",
           td_tok_vocab_size(e.tok), hp->n_vocab, td_tok_bos(e.tok), td_tok_eos(e.tok),
           (unsigned long long)td_tok_vocab_hash(e.tok));
    static const char *chat_names[] = {"none", "chatml", "llama3", "mistral"};
    printf("chat template:  %s\n", chat_names[td_tok_chat_kind(e.tok)]);
    printf("output head:    %s\n", hp->tied_output ? "tied to token_embd" : "separate");
    printf("weights/token:  %.1f MiB read per decode step\n", td_model_weight_bytes(e.model) / 1048576.0);
    size_t counts[TD_TYPE_COUNT] = {0}, bytes[TD_TYPE_COUNT] = {0};
    for (size_t i = 0; i < td_gguf_tensor_count(e.gguf); i++) {
        const td_gguf_tensor *t = td_gguf_tensor_at(e.gguf, i);
        if (t->type < TD_TYPE_COUNT) { counts[t->type]++; bytes[t->type] += t->nbytes; }
    }
    printf("tensor types:  ");
    for (int t = 0; t < TD_TYPE_COUNT; t++)
        if (counts[t]) printf(" %s x%zu (%.1f MiB)", td_quant_traits((uint32_t)t)->name, counts[t], bytes[t] / 1048576.0);
    printf("\n");
    if (all) {
        printf("metadata:\n");
        for (size_t i = 0; i < td_gguf_kv_count(e.gguf); i++) print_kv(td_gguf_kv_at(e.gguf, i));
        printf("tensors:\n");
        for (size_t i = 0; i < td_gguf_tensor_count(e.gguf); i++) {
            const td_gguf_tensor *t = td_gguf_tensor_at(e.gguf, i);
            printf("  ");
            print_str(t->name, strlen(t->name));
            for (size_t w = strlen(t->name); w < 28; w++) putchar(' ');
            printf(" %-5s [%llu, %llu]\n", td_quant_traits(t->type)->name, (unsigned long long)t->ne[0],
                   (unsigned long long)t->ne[1]);
        }
    }
    td_cli_engine_close(&e);
    return 0;
}
