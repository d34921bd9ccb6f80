/* comm_mpi_absent.c — the MPI backend in a build without MPI (CMake did not
 * find it): opening "mpi" says so instead of failing later. */
#include "comm/comm_internal.h"

bool td_comm_mpi_built(void) { return false; }

int td_comm_mpi_open(td_comm *c, td_err *err) {
    (void)c;
    return td_err_set(err, TD_E_UNSUPPORTED,
                      "comm: this tandem was built without MPI (install libopenmpi-dev and reconfigure)");
}
