/* score_input.h — the JSONL side of `tandem score`, without any I/O: the
 * input file's lines to items (custom ids, an error for each bad line, the
 * shard, the items a resumed job skips), a results file's bytes to the set
 * of ids already done (and where a torn last line starts), and an item's
 * JSON object to a tandem.v1.ScoreItem. cmd_score.c reads and writes the
 * files; the fuzz target (tests/fuzz/fuzz_score_input.c) feeds these the
 * bytes a file could hold.
 *
 * Promises: any bytes are accepted (a line that is not a JSON object with a
 * non-empty string custom_id becomes an item with an error, never a crash);
 * every item has a non-empty id, and an item whose id an earlier item of
 * the parse has is refused (an error), so no id is scored twice; out of
 * memory is reported, never half-done silently.
 */
#ifndef TD_SCORE_INPUT_H
#define TD_SCORE_INPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "tandem/v1/inference.pb-c.h"

/* A set of custom ids (open addressing; copies of the strings). Zeroed =
 * empty. */
typedef struct td_score_ids {
    char **slot;
    size_t cap, n;
} td_score_ids;
bool td_score_ids_has(const td_score_ids *s, const char *id);
/* false: out of memory (the set is unchanged). Adding an id twice keeps one. */
bool td_score_ids_add(td_score_ids *s, const char *id);
void td_score_ids_free(td_score_ids *s);

/* A results (or errors) file's bytes buf[0..size) (buf[size] must exist and
 * is overwritten; line ends become NULs): the custom_id of every complete
 * line joins done, *n_lines counts them, *good is the length of the
 * complete lines (a torn last line, left by a writer that died, starts
 * there). 0, or TD_E_NOMEM. */
int td_score_results_scan(char *buf, size_t size, td_score_ids *done, size_t *n_lines, size_t *good);

/* One input line. */
typedef struct td_score_item {
    char *id;      /* its custom_id, or "line-N" when it has none */
    cJSON *obj;    /* the parsed line (NULL when it is not JSON) */
    char *error;   /* not scorable: the reason, written as an error line */
} td_score_item;

typedef struct td_score_items {
    td_score_item *v;
    size_t n, cap;
    size_t skipped; /* lines of the shard whose id was done already */
} td_score_items;

/* The items of text[0..len) (modified: line ends become NULs, and so does
 * text[len], which must exist; "\r\n" ends
 * are taken as "\n"; empty lines are skipped and not counted) that belong to
 * shard shard_i of shard_n (by index among the non-empty lines) and whose
 * ids are not in done. A later line repeating an earlier line's id gets an
 * error. out must be zeroed; free it with td_score_items_free (also after
 * a failure). 0, or TD_E_NOMEM. */
int td_score_input_parse(char *text, size_t len, size_t shard_i, size_t shard_n, const td_score_ids *done,
                         td_score_items *out);
void td_score_items_free(td_score_items *items);

/* An item's request: id, prompt/continuation (strings pointing into obj and
 * id) or prompt_ids/continuation_ids (arrays the caller frees: *owned_prompt
 * and *owned_cont, NULL when none). An id that is not a number, or not one
 * in int32's range, becomes -1 (the server refuses it as outside the
 * vocabulary). it must be initialised (tandem__v1__score_item__init).
 * false: out of memory (what was made is in the owned pointers). */
bool td_score_item_fill(const td_score_item *x, Tandem__V1__ScoreItem *it, int32_t **owned_prompt,
                        int32_t **owned_cont);

#endif
