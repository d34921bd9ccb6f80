/* vnni_emul_kq.c — quant_kq_avx2.c built as its AVX512-VNNI variant on
 * SIMDe's portable intrinsics (names td_quant_vnniemu_*), for
 * test_quant_vnni. */
#define TD_QUANT_VNNI 1
#define TD_QUANT_SIMDE 1
#define TD_QUANT_ISA vnniemu
#include "quant/quant_kq_avx2.c"
