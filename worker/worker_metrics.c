/* worker_metrics.c — the worker's /metrics endpoint: the process registry
 * (common/metrics/) plus, refreshed at each scrape, the gauges that mirror
 * the engine (sequences open, KV-cache tokens reserved, their limits) and
 * whether the etcd registration is live. Call counters come from the hooks
 * in common/net/; admission refusals from worker_engine.c.
 */
#include <stdlib.h>

#include "metrics/metrics.h"
#include "net/etcd.h"
#include "worker.h"

struct td_worker_metrics {
    td_worker_engine *e;
    td_etcd_reg *reg; /* NULL: no etcd */
    td_metrics_server *srv;
};

/* On the metrics thread: the engine's stats take its lock; the
 * registration's liveness is read as the main loop reads it. */
static void collect(void *user) {
    td_worker_metrics *m = user;
    td_worker_stats st;
    td_worker_engine_stats(m->e, &st);
    td_metrics_worker_kv(st.sequences, st.max_sequences, st.reserved_tokens, st.max_tokens);
    td_metrics_etcd_up(m->reg && td_etcd_reg_alive(m->reg));
    td_metrics_etcd_registrations(m->reg ? td_etcd_reg_generation(m->reg) : 0);
}

td_worker_metrics *td_worker_metrics_start(const char *addr, td_worker_engine *e, td_etcd_reg *reg, td_err *err) {
    if (td_metrics_tandem_init(err)) return NULL;
    td_worker_metrics *m = calloc(1, sizeof *m);
    if (!m) {
        td_err_set(err, TD_E_NOMEM, "out of memory");
        return NULL;
    }
    m->e = e;
    m->reg = reg;
    if (!(m->srv = td_metrics_server_start(td_metrics_process(), addr, collect, m, err))) {
        free(m);
        return NULL;
    }
    td_log(TD_LOG_INFO, NULL, "serving Prometheus metrics on port %d (GET /metrics)", td_metrics_server_port(m->srv));
    return m;
}

void td_worker_metrics_stop(td_worker_metrics *m) {
    if (!m) return;
    td_metrics_server_stop(m->srv);
    free(m);
}
