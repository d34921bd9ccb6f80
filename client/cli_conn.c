/* cli_conn.c — how the commands that talk to a tandem server (generate
 * --server, score, health) reach it: TLS when --tls-ca is given, and a
 * bearer token (--token-file, else $TANDEM_TOKEN) sent as
 * "authorization: Bearer <token>" metadata. The token never appears in
 * output. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

td_net_channel *td_cli_conn_open(const char *cmd, td_cli_conn *c, const char *server,
                                 const td_net_channel_opts *base) {
    td_err err = {0};
    c->bearer = NULL;
    c->n_md = 0;
    const char *token = NULL;
    char **tokens = NULL;
    size_t n_tokens = 0;
    if (c->token_file) {
        if (td_net_tokens_load(c->token_file, &tokens, &n_tokens, &err)) {
            fprintf(stderr, "tandem %s: %s\n", cmd, err.msg);
            return NULL;
        }
        token = tokens[0]; /* a file may list several (the server's own): the first is ours */
    } else if (getenv("TANDEM_TOKEN") && *getenv("TANDEM_TOKEN")) {
        token = getenv("TANDEM_TOKEN");
    }
    if (token) {
        size_t n = strlen("Bearer ") + strlen(token) + 1;
        if (!(c->bearer = malloc(n))) {
            td_net_tokens_free(tokens, n_tokens);
            fprintf(stderr, "tandem %s: out of memory\n", cmd);
            return NULL;
        }
        snprintf(c->bearer, n, "Bearer %s", token);
        c->md = (td_net_metadata){.key = "authorization", .value = c->bearer};
        c->n_md = 1;
    }
    td_net_tokens_free(tokens, n_tokens);
    td_net_channel_opts o = base ? *base : (td_net_channel_opts){0};
    td_net_tls tls = {.ca_file = c->tls_ca};
    if (c->tls_ca) o.tls = &tls;
    td_net_channel *ch = td_net_channel_open(server, &o, &err);
    if (!ch) {
        fprintf(stderr, "tandem %s: %s\n", cmd, err.msg);
        td_cli_conn_close(c);
    }
    return ch;
}

const td_net_metadata *td_cli_conn_md(const td_cli_conn *c) { return c->n_md ? &c->md : NULL; }

void td_cli_conn_close(td_cli_conn *c) {
    if (c->bearer) {
        /* wiped: the token must not outlive its use in freed memory */
        volatile char *p = c->bearer;
        while (*p) *p++ = 0;
        free(c->bearer);
    }
    c->bearer = NULL;
    c->n_md = 0;
}
