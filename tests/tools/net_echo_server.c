/* net_echo_server.c (td-net-echo) — a tandem gRPC server with nothing but
 * grpc.health.v1.Health, for interop tests with independent clients
 * (tests/integration/net_interop.py). Check: SERVING for "" and
 * NOT_FOUND for any other service. Watch: SERVING, NOT_SERVING, SERVING, then
 * OK. Prints "port N" once it listens; stops on SIGINT or SIGTERM.
 * Usage: td-net-echo [ADDR] (default 127.0.0.1:0). */
#include <stdio.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "net/net.h"

static void check(td_net_call *call, const ProtobufCMessage *request, void *user) {
    (void)user;
    const Grpc__Health__V1__HealthCheckRequest *req = (const Grpc__Health__V1__HealthCheckRequest *)request;
    if (req->service[0] != '\0') {
        td_net_call_fail(call, TD_NET_NOT_FOUND, "unknown service %s", req->service);
        return;
    }
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    td_net_call_reply(call, &resp.base);
}

static void watch(td_net_call *call, const ProtobufCMessage *request, void *user) {
    (void)request;
    (void)user;
    static const Grpc__Health__V1__HealthCheckResponse__ServingStatus seq[] = {
        GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING,
        GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING,
        GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING,
    };
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        resp.status = seq[i];
        if (td_net_call_send(call, &resp.base, 10000) != 0) return; /* client gone */
    }
    td_net_call_finish(call);
}

int main(int argc, char **argv) {
    const char *addr = argc > 1 ? argv[1] : "127.0.0.1:0";
    td_net_signals_block(); /* before gRPC starts any thread */
    td_err err = {0};
    td_net_server_opts o = {.name = "td-net-echo"};
    td_net_server *s = td_net_server_create(&o, &err);
    int port = -1;
    if (s && td_net_server_add(s, "/grpc.health.v1.Health/Check", &grpc__health__v1__health_check_request__descriptor,
                               false, check, NULL, &err) == 0 &&
        td_net_server_add(s, "/grpc.health.v1.Health/Watch", &grpc__health__v1__health_check_request__descriptor,
                          true, watch, NULL, &err) == 0)
        port = td_net_server_listen(s, addr, &err);
    if (port <= 0 || td_net_server_start(s, &err) != 0) {
        fprintf(stderr, "td-net-echo: %s\n", err.msg);
        td_net_server_destroy(s);
        return 1;
    }
    printf("port %d\n", port);
    fflush(stdout);
    int sig = td_net_signals_wait(-1);
    fprintf(stderr, "td-net-echo: signal %d, shutting down\n", sig);
    td_net_server_destroy(s);
    return 0;
}
