/* comm_nccl_absent.c — the NCCL backend in a build without it (no
 * -DTANDEM_CUDA=ON, or CMake did not find nccl.h and libnccl in the CUDA
 * toolkit): every entry says so instead of failing later. */
#include "comm/comm_internal.h"

#define NO_NCCL                                                                                               \
    "comm: this tandem was built without NCCL (configure with -DTANDEM_CUDA=ON where nccl.h and libnccl "   \
    "are in the CUDA toolkit)"

bool td_comm_nccl_built(void) { return false; }
int td_comm_nccl_device(const td_comm *c) {
    (void)c;
    return -1;
}

int td_comm_nccl_open(td_comm *c, const td_comm_nccl_opts *o, td_err *err) {
    (void)c, (void)o;
    return td_err_set(err, TD_E_UNSUPPORTED, NO_NCCL);
}

int td_comm_nccl_make_id(uint8_t id[TD_COMM_NCCL_ID_BYTES], td_err *err) {
    (void)id;
    return td_err_set(err, TD_E_UNSUPPORTED, NO_NCCL);
}

int td_comm_nccl_ordered_sum(int device, const float *parts, int nparts, int64_t n, float *out, td_err *err) {
    (void)device, (void)parts, (void)nparts, (void)n, (void)out;
    return td_err_set(err, TD_E_UNSUPPORTED, NO_NCCL);
}
