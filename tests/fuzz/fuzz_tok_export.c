/* fuzz_tok_export.c — libFuzzer target for the tokenizer-export path that
 * GetTokenizer of the coordinator's vLLM engine API runs: arbitrary bytes
 * are read as a GGUF file in memory; where a tokenizer can be built from
 * them, td_tok_export_hf writes tokenizer.json and tokenizer_config.json
 * and td_zip_store packs both.
 * Besides the sanitizers, it traps on: an export failure without a
 * message, output that is not JSON (cJSON) or lacks its top-level keys, a
 * vocabulary in tokenizer.json whose size differs from the tokenizer's, and
 * a zip whose size is not its two files plus the fixed headers.
 * Seeds: tests/fuzz/corpus/fuzz_tok_export (the fuzz_gguf seeds: hand-built GGUF files and the
 * tiny models' heads, which carry byte-level BPE tokenizers).
 * Build: clang -fsanitize=fuzzer,address,undefined (CMake: -DTANDEM_FUZZ=ON).
 */
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf/gguf.h"
#include "tok/tok.h"
#include "util/util.h"
#include "fuzz_check.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    td_gguf *g = NULL;
    td_tok *t = NULL;
    td_err err = {0};
    if (td_gguf_open_memory(data, size, &g, &err)) return 0;
    if (td_tok_create(g, &t, &err)) {
        td_gguf_close(g);
        return 0;
    }
    char *tj = NULL, *cj = NULL;
    err = (td_err){0};
    int rc = td_tok_export_hf(t, g, 4096, &tj, &cj, &err);
    if (rc) {
        FZ_CHECK(err.msg[0] && !tj && !cj);
    } else {
        cJSON *a = cJSON_Parse(tj), *b = cJSON_Parse(cj);
        FZ_CHECK(a && b);
        const cJSON *model = cJSON_GetObjectItemCaseSensitive(a, "model");
        const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
        FZ_CHECK(cJSON_IsObject(vocab) && cJSON_GetArraySize(vocab) == td_tok_vocab_size(t));
        FZ_CHECK(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(model, "merges")));
        FZ_CHECK(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(a, "pre_tokenizer")));
        FZ_CHECK(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(a, "added_tokens")));
        FZ_CHECK(cJSON_GetObjectItemCaseSensitive(b, "tokenizer_class") != NULL);
        cJSON_Delete(a);
        cJSON_Delete(b);
        td_zip_file files[2] = {{"tokenizer.json", tj, strlen(tj)}, {"tokenizer_config.json", cj, strlen(cj)}};
        uint8_t *zip = NULL;
        size_t len = 0;
        FZ_CHECK(td_zip_store(files, 2, &zip, &len, &err) == 0);
        size_t names = strlen("tokenizer.json") + strlen("tokenizer_config.json");
        FZ_CHECK(len == 22 + 2 * (30 + 46) + 2 * names + files[0].size + files[1].size);
        free(zip);
    }
    free(tj);
    free(cj);
    td_tok_destroy(t);
    td_gguf_close(g);
    return 0;
}
