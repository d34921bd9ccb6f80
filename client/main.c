/* main.c — the tandem command-line tool: dispatches to one subcommand.
 * Exit status: 0 success, 1 runtime error, 2 usage error.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f) {
    fputs("usage: tandem COMMAND [OPTIONS]\n"
          "\n"
          "Commands:\n"
          "  generate     generate text from a prompt, streamed to stdout\n"
          "  tokenize     print the token ids (and pieces) of a text\n"
          "  info         describe a GGUF model file\n"
          "  perplexity   score a text file (teacher-forced log-likelihood)\n"
          "  bench        measure the engine (decode, prefill, verification cost, memory)\n"
          "  score        batch-score a JSONL file through a tandem cluster (resumable)\n"
          "  health       ask a tandem coordinator or worker whether it is serving\n"
          "\n"
          "Run 'tandem COMMAND --help' for the options of a command.\n"
          "The default model is $TANDEM_MODEL, else ~/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf\n"
          "(fetched by scripts/setup.sh).\n",
          f);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "generate")) return td_cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return td_cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "info")) return td_cmd_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "perplexity")) return td_cmd_perplexity(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return td_cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "score")) return td_cmd_score(argc - 1, argv + 1);
    if (!strcmp(cmd, "health")) return td_cmd_health(argc - 1, argv + 1);
    fprintf(stderr, "tandem: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
