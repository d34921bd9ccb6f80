/* net_health.c — the standard gRPC health service (grpc.health.v1.Health)
 * over the net layer: a table of service name -> status that the program
 * sets (liveness "" and readiness per service), served by Check and Watch.
 * Watch streams block on a condition variable and wake on every change, on
 * cancellation (polled) and on shutdown.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "grpc/health/v1/health.pb-c.h"
#include "net/net.h"

#define MAX_SERVICES 16

struct td_net_health {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping;
    int32_t n;
    char name[MAX_SERVICES][96];
    int status[MAX_SERVICES];
    uint64_t version; /* bumped on every change */
};

td_net_health *td_net_health_create(td_err *err) {
    td_net_health *h = calloc(1, sizeof *h);
    if (!h) {
        td_err_set(err, TD_E_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->cv, &ca);
    pthread_condattr_destroy(&ca);
    return h;
}

void td_net_health_destroy(td_net_health *h) {
    if (!h) return;
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    free(h);
}

static int find(const td_net_health *h, const char *service) {
    for (int32_t i = 0; i < h->n; i++)
        if (strcmp(h->name[i], service) == 0) return i;
    return -1;
}

void td_net_health_set(td_net_health *h, const char *service, int status) {
    pthread_mutex_lock(&h->mu);
    int i = find(h, service ? service : "");
    if (i < 0 && h->n < MAX_SERVICES) {
        i = h->n++;
        snprintf(h->name[i], sizeof h->name[i], "%s", service ? service : "");
    }
    if (i >= 0 && h->status[i] != status) {
        h->status[i] = status;
        h->version++;
        pthread_cond_broadcast(&h->cv);
    }
    pthread_mutex_unlock(&h->mu);
}

void td_net_health_shutdown(td_net_health *h) {
    pthread_mutex_lock(&h->mu);
    h->stopping = true;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

static void on_check(td_net_call *c, const ProtobufCMessage *msg, void *user) {
    td_net_health *h = user;
    const Grpc__Health__V1__HealthCheckRequest *q = (const Grpc__Health__V1__HealthCheckRequest *)msg;
    pthread_mutex_lock(&h->mu);
    int i = find(h, q->service);
    int status = i >= 0 ? h->status[i] : -1;
    pthread_mutex_unlock(&h->mu);
    if (status < 0) {
        td_net_call_fail(c, TD_NET_NOT_FOUND, "service \"%.80s\" is unknown here", q->service);
        return;
    }
    Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
    td_net_call_reply(c, &r.base);
}

static void on_watch(td_net_call *c, const ProtobufCMessage *msg, void *user) {
    td_net_health *h = user;
    const Grpc__Health__V1__HealthCheckRequest *q = (const Grpc__Health__V1__HealthCheckRequest *)msg;
    int last = -2;
    for (;;) {
        pthread_mutex_lock(&h->mu);
        int i = find(h, q->service);
        int status = i >= 0 ? h->status[i] : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
        while (status == last && !h->stopping) {
            /* wake at least every 200 ms to notice a client that went away */
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_nsec += 200 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
            pthread_cond_timedwait(&h->cv, &h->mu, &ts);
            i = find(h, q->service);
            status = i >= 0 ? h->status[i] : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
            if (status == last && td_net_call_cancelled(c)) break;
        }
        bool stopping = h->stopping;
        pthread_mutex_unlock(&h->mu);
        if (stopping || td_net_call_cancelled(c)) break;
        if (status == last) continue;
        Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
        r.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
        if (td_net_call_send(c, &r.base, 5000) != 0) return;
        last = status;
    }
    if (td_net_call_cancelled(c)) td_net_call_fail(c, TD_NET_CANCELLED, "watch ended");
    else td_net_call_fail(c, TD_NET_UNAVAILABLE, "server shutting down");
}

int td_net_health_add(td_net_health *h, td_net_server *s, td_err *err) {
    int rc = td_net_server_add(s, "/grpc.health.v1.Health/Check", &grpc__health__v1__health_check_request__descriptor,
                               false, on_check, h, err);
    if (rc == TD_OK)
        rc = td_net_server_add(s, "/grpc.health.v1.Health/Watch", &grpc__health__v1__health_check_request__descriptor,
                               true, on_watch, h, err);
    return rc;
}
