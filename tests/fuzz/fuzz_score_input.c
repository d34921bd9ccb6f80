/* fuzz_score_input.c — libFuzzer target for `tandem score`'s JSONL reader
 * (client/score_input.c, the code the command runs): a results file's bytes
 * become the set of ids already done, an input file's bytes become items,
 * and every scorable item becomes a tandem.v1.ScoreItem in one ScoreRequest.
 *
 * Input: byte 0 picks the shard (bits 2-3: N - 1; bits 0-1: I modulo N);
 * the bytes up to the first 0xFF are the results file, the rest the input
 * file (no 0xFF: no results file).
 *
 * Checks (besides the sanitizers): the results scan keeps exactly the
 * complete lines (what it keeps ends with a newline, what it cuts holds
 * none) and counts them; every item has a non-empty id, none is among the
 * ids done, and one repeating an earlier item's is refused (so no id is
 * scored twice); the items plus the skipped lines are the
 * shard's non-empty lines; an item refused carries a reason; the request
 * built from the others packs and unpacks again with the same ids and
 * lengths.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "score_input.h"
#include "util/util.h"
#include "fuzz_check.h"

/* A NUL-terminated copy (the reader writes into its text). */
static char *dup_bytes(const uint8_t *p, size_t n) {
    char *s = malloc(n + 1);
    FZ_CHECK(s);
    if (n) memcpy(s, p, n);
    s[n] = 0;
    return s;
}

/* The shard's non-empty lines of text[0..n), counted as the reader defines
 * them (a line is empty when nothing but a final '\r' precedes its end, or
 * it starts with a NUL byte). */
static size_t shard_lines(const uint8_t *text, size_t n, size_t shard_i, size_t shard_n) {
    size_t count = 0, index = 0;
    for (size_t at = 0; at < n;) {
        const uint8_t *nl = memchr(text + at, '\n', n - at);
        size_t full = nl ? (size_t)(nl - (text + at)) : n - at, len = full;
        if (len && text[at + len - 1] == '\r') len--;
        if (len && text[at] != 0 && index++ % shard_n == shard_i) count++;
        at += full + 1;
    }
    return count;
}

static void check_results(const uint8_t *p, size_t n, td_score_ids *done) {
    char *buf = dup_bytes(p, n);
    size_t lines = 0, good = 0;
    FZ_CHECK(td_score_results_scan(buf, n, done, &lines, &good) == TD_OK);
    FZ_CHECK(good <= n);
    FZ_CHECK(good == 0 || p[good - 1] == '\n');
    FZ_CHECK(memchr(p + good, '\n', n - good) == NULL);
    size_t nl = 0;
    for (size_t i = 0; i < good; i++) nl += p[i] == '\n';
    FZ_CHECK(lines == nl);
    free(buf);
}

static void check_request(const td_score_items *items) {
    Tandem__V1__ScoreItem *it = calloc(items->n ? items->n : 1, sizeof *it);
    Tandem__V1__ScoreItem **itp = calloc(items->n ? items->n : 1, sizeof *itp);
    int32_t **owned = calloc(2 * items->n + 1, sizeof *owned);
    FZ_CHECK(it && itp && owned);
    size_t m = 0;
    for (size_t i = 0; i < items->n; i++) {
        const td_score_item *x = &items->v[i];
        if (x->error) continue;
        tandem__v1__score_item__init(&it[m]);
        FZ_CHECK(td_score_item_fill(x, &it[m], &owned[2 * m], &owned[2 * m + 1]));
        itp[m] = &it[m];
        m++;
    }
    Tandem__V1__ScoreRequest q = TANDEM__V1__SCORE_REQUEST__INIT;
    q.n_items = m;
    q.items = itp;
    size_t n = protobuf_c_message_get_packed_size(&q.base);
    uint8_t *buf = malloc(n ? n : 1);
    FZ_CHECK(buf);
    FZ_CHECK(protobuf_c_message_pack(&q.base, buf) == n);
    Tandem__V1__ScoreRequest *back = tandem__v1__score_request__unpack(NULL, n, buf);
    FZ_CHECK(back && back->n_items == m);
    for (size_t i = 0; i < m; i++) {
        const Tandem__V1__ScoreItem *a = it + i, *b = back->items[i];
        FZ_CHECK(!strcmp(a->id, b->id) && !strcmp(a->prompt, b->prompt) && !strcmp(a->continuation, b->continuation));
        FZ_CHECK(a->n_prompt_ids == b->n_prompt_ids && a->n_continuation_ids == b->n_continuation_ids);
        for (size_t k = 0; k < a->n_prompt_ids; k++) FZ_CHECK(a->prompt_ids[k] == b->prompt_ids[k]);
        for (size_t k = 0; k < a->n_continuation_ids; k++) FZ_CHECK(a->continuation_ids[k] == b->continuation_ids[k]);
    }
    tandem__v1__score_request__free_unpacked(back, NULL);
    free(buf);
    for (size_t i = 0; i < 2 * items->n + 1; i++) free(owned[i]);
    free(owned);
    free(it);
    free(itp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t shard_n = 1 + ((data[0] >> 2) & 3), shard_i = (data[0] & 3) % shard_n;
    const uint8_t *rest = data + 1;
    size_t n_rest = size - 1;
    const uint8_t *sep = memchr(rest, 0xFF, n_rest);
    const uint8_t *res = rest, *in = rest;
    size_t n_res = 0, n_in = n_rest;
    if (sep) {
        n_res = (size_t)(sep - rest);
        in = sep + 1;
        n_in = n_rest - n_res - 1;
    }
    td_score_ids done = {0};
    check_results(res, n_res, &done);

    char *text = dup_bytes(in, n_in);
    td_score_items items = {0};
    FZ_CHECK(td_score_input_parse(text, n_in, shard_i, shard_n, &done, &items) == TD_OK);
    FZ_CHECK(items.n + items.skipped == shard_lines(in, n_in, shard_i, shard_n));
    td_score_ids seen = {0};
    for (size_t i = 0; i < items.n; i++) {
        const td_score_item *x = &items.v[i];
        FZ_CHECK(x->id && x->id[0]);
        FZ_CHECK(!td_score_ids_has(&done, x->id));
        FZ_CHECK(!td_score_ids_has(&seen, x->id) || x->error); /* a repeated id is refused */
        FZ_CHECK(td_score_ids_add(&seen, x->id));
        FZ_CHECK(!x->error || x->error[0]);
        FZ_CHECK(x->error || cJSON_IsObject(x->obj));
    }
    check_request(&items);
    td_score_ids_free(&seen);
    td_score_items_free(&items);
    td_score_ids_free(&done);
    free(text);
    return 0;
}
