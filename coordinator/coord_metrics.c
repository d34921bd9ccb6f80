/* coord_metrics.c — the coordinator's /metrics endpoint: the process
 * registry (common/metrics/) plus, refreshed at each scrape, the gauges that
 * mirror the coordinator's state: live workers by role and whether the etcd
 * watch is current. Counters are updated where things happen (one-line
 * hooks in the handlers and in common/net/).
 */
#include <stdlib.h>

#include "coordinator.h"
#include "metrics/metrics.h"

struct td_coord_metrics {
    td_coord *c;
    td_etcd_watch *watch; /* NULL: static workers, no etcd */
    td_metrics_server *srv;
};

/* On the metrics thread: member counts take the table's lock, the watch's
 * liveness is an atomic, so a scrape never races the main loop. */
static void collect(void *user) {
    td_coord_metrics *m = user;
    td_metrics_workers_known("verifier", td_coord_members_count(m->c->members, "verifier", NULL));
    td_metrics_workers_known("drafter", td_coord_members_count(m->c->members, "drafter", NULL));
    td_metrics_etcd_up(m->watch && td_etcd_watch_alive(m->watch));
}

td_coord_metrics *td_coord_metrics_start(const char *addr, td_coord *c, td_etcd_watch *watch, td_err *err) {
    if (td_metrics_tandem_init(err)) return NULL;
    td_coord_metrics *m = calloc(1, sizeof *m);
    if (!m) {
        td_err_set(err, TD_E_NOMEM, "out of memory");
        return NULL;
    }
    m->c = c;
    m->watch = watch;
    if (!(m->srv = td_metrics_server_start(td_metrics_process(), addr, collect, m, err))) {
        free(m);
        return NULL;
    }
    td_log(TD_LOG_INFO, NULL, "serving Prometheus metrics on port %d (GET /metrics)", td_metrics_server_port(m->srv));
    return m;
}

void td_coord_metrics_stop(td_coord_metrics *m) {
    if (!m) return;
    td_metrics_server_stop(m->srv);
    free(m);
}
