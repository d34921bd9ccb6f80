/* drafters.h — builds the drafters named on the command line
 * (--draft none|lookup|ngram|recycle|layerskip[:A-B]|model:PATH|auto, comma
 * separated) and owns everything they need (a draft model's file and
 * weights). Shared by `tandem generate` and `tandem bench spec`.
 */
#ifndef TD_CLI_DRAFTERS_H
#define TD_CLI_DRAFTERS_H

#include "cli.h"
#include "spec/spec.h"

#define TD_CLI_MAX_DRAFTERS 8

typedef struct td_drafter_set {
    td_drafter *d[TD_CLI_MAX_DRAFTERS];
    int32_t n;
    td_engine draft_engine; /* for model:PATH */
    bool has_draft_engine;
    td_drafter_scope scope; /* of drafters that learn across requests (recycle) */
} td_drafter_set;

/* Parses spec and creates the drafters for sequences 0..max_seqs-1 of at most
 * max_len tokens, learning within scope (spec.h: per request unless one user
 * owns them all). Prints one error line and returns non-zero on failure. */
int td_cli_drafters_open(td_drafter_set *s, const char *spec, const td_engine *target,
                         const td_sample_params *sp, int32_t max_seqs, int32_t max_len, td_drafter_scope scope);
void td_cli_drafters_close(td_drafter_set *s);

#endif
