/* score_input.c — `tandem score`'s JSONL read into items and id sets (see
 * score_input.h); moved out of cmd_score.c so that a fuzz target can feed
 * it any bytes. The behaviour is the command's: the same items, ids, error
 * texts and skips for the same files.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "score_input.h"
#include "util/util.h"

/* ---- a set of custom ids ---- */

static uint64_t hash_str(const char *s) { return td_fnv1a64(0xcbf29ce484222325ULL, s, strlen(s)); }

bool td_score_ids_has(const td_score_ids *s, const char *id) {
    if (!s->cap) return false;
    for (size_t i = hash_str(id) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (!s->slot[i]) return false;
        if (!strcmp(s->slot[i], id)) return true;
    }
}

bool td_score_ids_add(td_score_ids *s, const char *id) {
    if ((s->n + 1) * 2 > s->cap) { /* at most half full: probes stay short and always end */
        size_t cap = s->cap ? s->cap * 2 : 1024;
        char **slot = calloc(cap, sizeof *slot);
        if (!slot) return false;
        for (size_t i = 0; i < s->cap; i++)
            if (s->slot[i]) {
                size_t j = hash_str(s->slot[i]) & (cap - 1);
                while (slot[j]) j = (j + 1) & (cap - 1);
                slot[j] = s->slot[i];
            }
        free(s->slot);
        s->slot = slot;
        s->cap = cap;
    }
    size_t i = hash_str(id) & (s->cap - 1);
    while (s->slot[i]) {
        if (!strcmp(s->slot[i], id)) return true;
        i = (i + 1) & (s->cap - 1);
    }
    if (!(s->slot[i] = strdup(id))) return false;
    s->n++;
    return true;
}

void td_score_ids_free(td_score_ids *s) {
    for (size_t i = 0; i < s->cap; i++) free(s->slot[i]);
    free(s->slot);
    *s = (td_score_ids){0};
}

/* ---- results files ---- */

int td_score_results_scan(char *buf, size_t size, td_score_ids *done, size_t *n_lines, size_t *good) {
    buf[size] = 0;
    *good = 0; /* bytes up to the end of the last complete line */
    for (size_t i = 0; i < size;) {
        char *nl = memchr(buf + i, '\n', size - i);
        if (!nl) break;
        *nl = 0;
        cJSON *o = cJSON_Parse(buf + i);
        const cJSON *id = o ? cJSON_GetObjectItemCaseSensitive(o, "custom_id") : NULL;
        if (cJSON_IsString(id) && !td_score_ids_add(done, id->valuestring)) {
            cJSON_Delete(o);
            return TD_E_NOMEM;
        }
        cJSON_Delete(o);
        (*n_lines)++;
        i = (size_t)(nl - buf) + 1;
        *good = i;
    }
    return TD_OK;
}

/* ---- input files ---- */

void td_score_items_free(td_score_items *items) {
    for (size_t i = 0; i < items->n; i++) {
        cJSON_Delete(items->v[i].obj);
        free(items->v[i].id);
        free(items->v[i].error);
    }
    free(items->v);
    *items = (td_score_items){0};
}

int td_score_input_parse(char *text, size_t len, size_t shard_i, size_t shard_n, const td_score_ids *done,
                         td_score_items *out) {
    td_score_ids seen = {0};
    size_t line_no = 0, index = 0;
    int rc = TD_OK;
    for (char *p = text, *end = text + len; p < end; line_no++) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        char *line = p;
        p += n + 1;
        line[n] = 0; /* the last line without a newline: its end is text[len], which the caller provides */
        if (n && line[n - 1] == '\r') line[n - 1] = 0;
        if (!line[0]) continue;
        if (index++ % shard_n != shard_i) continue;
        td_score_item x = {0};
        x.obj = cJSON_Parse(line);
        const cJSON *id = x.obj ? cJSON_GetObjectItemCaseSensitive(x.obj, "custom_id") : NULL;
        bool bad = false;
        if (cJSON_IsString(id) && id->valuestring[0]) {
            x.id = strdup(id->valuestring);
        } else {
            char idbuf[64];
            snprintf(idbuf, sizeof idbuf, "line-%zu", line_no + 1);
            x.id = strdup(idbuf);
            x.error = strdup(x.obj ? "no custom_id (a non-empty string) on this line" : "not a JSON object");
            bad = true;
        }
        if (!x.id || (bad && !x.error)) goto nomem_item;
        if (td_score_ids_has(done, x.id)) {
            out->skipped++;
            cJSON_Delete(x.obj);
            free(x.id);
            free(x.error);
            continue;
        }
        if (td_score_ids_has(&seen, x.id) && !x.error && !(x.error = strdup("custom_id repeats an earlier line's")))
            goto nomem_item;
        if (!td_score_ids_add(&seen, x.id)) goto nomem_item;
        if (out->n == out->cap) {
            size_t cap = out->cap ? out->cap * 2 : 1024;
            td_score_item *grown = realloc(out->v, cap * sizeof *grown);
            if (!grown) goto nomem_item;
            out->v = grown;
            out->cap = cap;
        }
        out->v[out->n++] = x;
        continue;
    nomem_item:
        cJSON_Delete(x.obj);
        free(x.id);
        free(x.error);
        rc = TD_E_NOMEM;
        break;
    }
    td_score_ids_free(&seen);
    return rc;
}

/* ---- an item's request ---- */

/* The ids of a JSON array; anything but an integer-valued number in int32's
 * range becomes -1 (a fraction is cut toward zero, as before). */
static int32_t *ids_of(const cJSON *arr, size_t *n) {
    *n = (size_t)cJSON_GetArraySize(arr);
    int32_t *v = malloc((*n ? *n : 1) * sizeof *v);
    if (!v) return NULL;
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        double d = cJSON_IsNumber(e) ? e->valuedouble : -1;
        /* converting a double outside int32 (or NaN) is undefined in C */
        v[i++] = d > -2147483649.0 && d < 2147483648.0 ? (int32_t)d : -1;
    }
    return v;
}

bool td_score_item_fill(const td_score_item *x, Tandem__V1__ScoreItem *it, int32_t **owned_prompt,
                        int32_t **owned_cont) {
    *owned_prompt = *owned_cont = NULL;
    it->id = x->id;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(x->obj, "prompt");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(x->obj, "continuation");
    const cJSON *pi = cJSON_GetObjectItemCaseSensitive(x->obj, "prompt_ids");
    const cJSON *ci = cJSON_GetObjectItemCaseSensitive(x->obj, "continuation_ids");
    size_t n = 0;
    if (cJSON_IsString(p)) it->prompt = p->valuestring;
    else if (cJSON_IsArray(pi)) {
        if (!(*owned_prompt = ids_of(pi, &n))) return false;
        it->prompt_ids = *owned_prompt;
        it->n_prompt_ids = n;
    }
    if (cJSON_IsString(c)) it->continuation = c->valuestring;
    else if (cJSON_IsArray(ci)) {
        if (!(*owned_cont = ids_of(ci, &n))) return false;
        it->continuation_ids = *owned_cont;
        it->n_continuation_ids = n;
    }
    return true;
}
