/* cmd_health.c — `tandem health`: asks a tandem process (coordinator or
 * worker) for its grpc.health.v1 status; exit 0 only when SERVING, so
 * scripts can wait on it.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "grpc/health/v1/health.pb-c.h"
#include "net/net.h"

static void usage(FILE *f) {
    fputs("usage: tandem health --server ADDR [--service NAME] [--timeout-ms MS]\n"
          "\n"
          "Prints the grpc.health.v1 status of a tandem coordinator or worker and exits 0\n"
          "only when it is SERVING (1 otherwise, 2 on bad usage).\n"
          "  --server ADDR      host:port of the process (its main or its health port)\n"
          "  --service NAME     \"\" (default) = the process is alive; tandem.v1.Inference =\n"
          "                     the coordinator is ready (a verifier is known, etcd current)\n"
          "  --timeout-ms MS    give up after MS milliseconds (default 3000)\n"
          "  --tls-ca FILE      TLS to the server, its certificate checked against this CA (PEM)\n"
          "  --token-file FILE  bearer token (first line); default $TANDEM_TOKEN (health itself\n"
          "                     needs none)\n",
          f);
}

int td_cmd_health(int argc, char **argv) {
    const char *cmd = "health", *server = NULL, *service = "";
    long timeout = 3000;
    td_cli_conn conn = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        if (!(v = td_cli_value(cmd, argc, argv, &i))) return 2;
        if (!strcmp(a, "--server")) server = v;
        else if (!strcmp(a, "--service")) service = v;
        else if (!strcmp(a, "--tls-ca")) conn.tls_ca = v;
        else if (!strcmp(a, "--token-file")) conn.token_file = v;
        else if (!strcmp(a, "--timeout-ms")) { if (!td_cli_int(cmd, a, v, 1, 3600000, &timeout)) return 2; }
        else { fprintf(stderr, "tandem health: unknown option '%s'\n", a); usage(stderr); return 2; }
    }
    if (!server) { fprintf(stderr, "tandem health: --server ADDR is required\n"); return 2; }
    td_net_channel *ch = td_cli_conn_open("health", &conn, server, NULL);
    if (!ch) return 1;
    Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    q.service = (char *)service;
    ProtobufCMessage *resp = NULL;
    td_net_status st;
    int code = td_net_unary(ch, "/grpc.health.v1.Health/Check", &q.base, &grpc__health__v1__health_check_response__descriptor,
                            &resp, timeout, td_cli_conn_md(&conn), conn.n_md, &st);
    int status = 1;
    if (code != TD_NET_OK) {
        printf("UNREACHABLE\n");
        fprintf(stderr, "tandem health: %s: %s: %s\n", server, td_net_code_name(code), st.msg);
    } else {
        int s = ((Grpc__Health__V1__HealthCheckResponse *)resp)->status;
        const char *names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
        printf("%s\n", s >= 0 && s < 4 ? names[s] : "UNKNOWN");
        status = s == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING ? 0 : 1;
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    td_net_channel_close(ch);
    td_cli_conn_close(&conn);
    return status;
}
