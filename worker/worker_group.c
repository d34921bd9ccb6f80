/* worker_group.c — forms a verifier's tensor-parallel group before the
 * engine loads: the processes an MPI launcher started (mpirun -np N; the
 * group's transport MPI or NCCL), or, where no launcher exists (a
 * StatefulSet's pods on Kubernetes), NCCL ranks that meet through etcd —
 * rank 0 makes the group's id and publishes it under
 * /tandem/<cluster>/groups/<group>/nccl-id, the others wait for it there,
 * every rank joins, and rank 0 then revokes the key's lease, so a later
 * start never finds this one's id. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm.h"
#include "worker.h"

/* NCCL's join waits for every rank with no timeout and cannot be cancelled
 * from outside, so a rank whose peers never come (one died after the
 * rendezvous, or is stuck in an earlier group) would wait forever. A
 * watchdog ends the process after the join timeout instead: under
 * Kubernetes the pod restarts and the group forms anew. */
typedef struct join_watch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    const td_worker_group_opts *o;
} join_watch;

static void *join_watch_main(void *arg) {
    join_watch *w = arg;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += w->o->join_timeout_sec;
    pthread_mutex_lock(&w->mu);
    int rc = 0;
    while (!w->done && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&w->cv, &w->mu, &until);
    bool late = !w->done;
    pthread_mutex_unlock(&w->mu);
    if (late) {
        td_log(TD_LOG_ERROR, NULL, "tensor-parallel group %s: rank %d of %d: the other ranks did not join within "
               "%d s (--tp-join-timeout); NCCL's join cannot be cancelled, so this process exits",
               w->o->group, w->o->rank, w->o->size, (int)w->o->join_timeout_sec);
        _exit(1);
    }
    return NULL;
}

/* td_comm_open_nccl under the watchdog. */
static td_comm *join_watched(const td_worker_group_opts *o, const td_comm_nccl_opts *no, td_err *err) {
    join_watch w = {.done = false, .o = o};
    pthread_t th;
    bool watching = !pthread_mutex_init(&w.mu, NULL);
    if (watching && pthread_cond_init(&w.cv, NULL)) {
        pthread_mutex_destroy(&w.mu);
        watching = false;
    }
    if (watching && pthread_create(&th, NULL, join_watch_main, &w)) {
        pthread_cond_destroy(&w.cv);
        pthread_mutex_destroy(&w.mu);
        watching = false;
    }
    if (!watching) td_log(TD_LOG_WARN, NULL, "tensor-parallel group %s: no watchdog for the join", o->group);
    td_comm *c = td_comm_open_nccl(no, err);
    if (watching) {
        pthread_mutex_lock(&w.mu);
        w.done = true;
        pthread_cond_signal(&w.cv);
        pthread_mutex_unlock(&w.mu);
        pthread_join(th, NULL);
        pthread_cond_destroy(&w.cv);
        pthread_mutex_destroy(&w.mu);
    }
    return c;
}

/* Ranks given by the caller: the rendezvous, then NCCL's join. */
static td_comm *open_through_etcd(const td_worker_group_opts *o, td_err *err) {
    const char *gen = o->generation ? o->generation : "0";
    td_etcd *etcd = td_etcd_open(o->etcd, o->etcd_opts, err);
    if (!etcd) return NULL;
    td_etcd_rdv_opts ro = {.cluster = o->cluster, .group = o->group, .generation = gen,
                           .ttl_sec = o->join_timeout_sec, .timeout_ms = o->join_timeout_sec * 1000};
    uint8_t id[TD_COMM_NCCL_ID_BYTES];
    int64_t lease = 0;
    td_comm *c = NULL;
    if (o->rank == 0) {
        if (td_comm_nccl_unique_id(id, err) || td_etcd_rdv_publish(etcd, &ro, id, sizeof id, &lease, err)) goto out;
        td_log(TD_LOG_INFO, NULL, "tensor-parallel group %s (generation %s): rank 0 of %d published its id in etcd; "
               "waiting up to %d s for the other ranks", o->group, gen, o->size, (int)o->join_timeout_sec);
    } else {
        td_log(TD_LOG_INFO, NULL, "tensor-parallel group %s (generation %s): rank %d of %d waiting up to %d s "
               "for rank 0's id in etcd", o->group, gen, o->rank, o->size, (int)o->join_timeout_sec);
        if (td_etcd_rdv_wait(etcd, &ro, id, sizeof id, err)) goto out;
    }
    td_comm_nccl_opts no = {.device = o->device, .boot = TD_COMM_NCCL_BOOT_ID, .rank = o->rank,
                            .size = o->size, .id = id};
    c = join_watched(o, &no, err);
    if (c) td_log(TD_LOG_INFO, NULL, "tensor-parallel group %s formed: rank %d of %d", o->group, o->rank, o->size);
out:
    /* formed or not, this start's id is done with: a restart makes anew */
    if (lease) td_etcd_lease_revoke(etcd, lease, NULL);
    td_etcd_close(etcd);
    return c;
}

td_comm *td_worker_group_open(const td_worker_group_opts *o, td_err *err) {
    if (o->size < 2) {
        td_err_set(err, TD_E_ARG, "a group has at least 2 ranks (--tp %d)", o->size);
        return NULL;
    }
    if (o->rank >= 0) {
        if (o->rank >= o->size) {
            td_err_set(err, TD_E_ARG, "--tp-rank %d is not a rank of --tp %d (0..%d)", o->rank, o->size, o->size - 1);
            return NULL;
        }
        return open_through_etcd(o, err);
    }
    if (!td_comm_launched()) {
        td_err_set(err, TD_E_ARG, "--tp %d runs as %d processes: start them with mpirun -np %d, or give each its "
                   "--tp-rank (NCCL ranks meeting through etcd)", o->size, o->size, o->size);
        return NULL;
    }
    td_comm *c = td_comm_open(o->comm, err);
    if (!c) return NULL;
    if (td_comm_size(c) != o->size) {
        td_err_set(err, TD_E_ARG, "--tp %d, but mpirun started %d processes", o->size, td_comm_size(c));
        return NULL; /* without MPI_Finalize: mpirun ends the group */
    }
    return c;
}
