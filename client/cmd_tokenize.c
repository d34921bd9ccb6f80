/* cmd_tokenize.c — `tandem tokenize`: token ids of a text, one line; with
 * --pieces also each token's text; with --export-hf DIR the tokenizer as
 * Hugging Face files instead.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

static int write_text(const char *dir, const char *name, const char *text) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    size_t len = strlen(text);
    if (!f || fwrite(text, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "tandem tokenize: %s: %s\n", path, strerror(errno));
        if (f) fclose(f);
        return 1;
    }
    printf("%s\n", path);
    return 0;
}

/* --export-hf: tokenizer.json and tokenizer_config.json into dir. */
static int export_hf(const td_engine *e, const char *dir) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "tandem tokenize: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char *tj = NULL, *cj = NULL;
    td_err err = {0};
    uint64_t ctx = 0;
    const char *arch = NULL;
    size_t arch_len = 0;
    char key[96];
    if (td_gguf_get_str(e->gguf, "general.architecture", &arch, &arch_len) && arch_len < 64) {
        snprintf(key, sizeof key, "%.*s.context_length", (int)arch_len, arch);
        td_gguf_get_u64(e->gguf, key, &ctx);
    }
    if (td_tok_export_hf(e->tok, e->gguf, (int32_t)ctx, &tj, &cj, &err)) {
        fprintf(stderr, "tandem tokenize: %s\n", err.msg);
        return 1;
    }
    int status = write_text(dir, "tokenizer.json", tj) || write_text(dir, "tokenizer_config.json", cj);
    free(tj);
    free(cj);
    return status;
}

int td_cmd_tokenize(int argc, char **argv) {
    const char *cmd = "tokenize";
    char buf[1024];
    const char *model = td_cli_default_model(buf, sizeof buf), *text = NULL, *file = NULL, *hf_dir = NULL;
    bool pieces = false, special = true, bos = false, bos_set = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            puts("usage: tandem tokenize [--model PATH] (--text TEXT | --file PATH | TEXT) [--pieces]\n"
                 "                       [--no-special] [--bos|--no-bos]\n"
                 "       tandem tokenize [--model PATH] --export-hf DIR\n\n"
                 "Prints the token ids of the text on one line. --pieces prints id and text per line.\n"
                 "Special-token text (e.g. <|im_start|>) is recognised unless --no-special.\n"
                 "BOS follows the model's add_bos_token unless --bos/--no-bos.\n\n"
                 "--export-hf DIR writes the tokenizer as Hugging Face files, DIR/tokenizer.json\n"
                 "(encodes as tandem does with special tokens recognised) and\n"
                 "DIR/tokenizer_config.json (chat template, special tokens): what the coordinator's\n"
                 "vLLM engine API sends a gateway. Byte-level BPE vocabularies only.");
            return 0;
        } else if (!strcmp(a, "--model")) { if (!(model = td_cli_value(cmd, argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--text")) { if (!(text = td_cli_value(cmd, argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--file")) { if (!(file = td_cli_value(cmd, argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--export-hf")) { if (!(hf_dir = td_cli_value(cmd, argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--pieces")) pieces = true;
        else if (!strcmp(a, "--no-special")) special = false;
        else if (!strcmp(a, "--bos")) { bos = true; bos_set = true; }
        else if (!strcmp(a, "--no-bos")) { bos = false; bos_set = true; }
        else if (a[0] == '-' && a[1]) { fprintf(stderr, "tandem tokenize: unknown option '%s'\n", a); return 2; }
        else text = a;
    }
    if (hf_dir) {
        if (text || file) {
            fprintf(stderr, "tandem tokenize: --export-hf takes no text\n");
            return 2;
        }
        td_engine e;
        if (td_cli_engine_open(&e, model, 1)) return 1;
        int status = export_hf(&e, hf_dir);
        td_cli_engine_close(&e);
        return status;
    }
    if (!text == !file) {
        fprintf(stderr, "tandem tokenize: give the text (or --file PATH)\n");
        return 2;
    }
    size_t len;
    char *owned = NULL;
    if (file) {
        if (!(owned = td_cli_read_file(cmd, file, &len))) return 1;
        text = owned;
    } else {
        len = strlen(text);
    }
    td_engine e;
    if (td_cli_engine_open(&e, model, 1)) { free(owned); return 1; }
    int32_t *ids = NULL;
    size_t n = 0;
    td_err err = {0};
    int status = 0;
    if (td_tok_encode(e.tok, text, len, bos_set ? bos : td_tok_add_bos(e.tok), special, &ids, &n, &err)) {
        fprintf(stderr, "tandem tokenize: %s\n", err.msg);
        status = 1;
    } else if (pieces) {
        for (size_t i = 0; i < n; i++) {
            /* a piece may be long (runs of spaces, code) and comes from the
             * model file: printed whole, escaped */
            char small[256], *piece = small;
            int k = td_tok_piece(e.tok, ids[i], true, small, sizeof small);
            if (k > (int)sizeof small && (piece = malloc((size_t)k)) != NULL)
                k = td_tok_piece(e.tok, ids[i], true, piece, (size_t)k);
            if (!piece) {
                fprintf(stderr, "tandem tokenize: out of memory\n");
                status = 1;
                break;
            }
            printf("%d\t", ids[i]);
            if (k > 0) td_cli_print_escaped(stdout, piece, (size_t)k, (size_t)k);
            putchar('\n');
            if (piece != small) free(piece);
        }
    } else {
        for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
    }
    free(ids);
    free(owned);
    td_cli_engine_close(&e);
    return status;
}
