/* vnni_emul_blockwise.c — quant_blockwise_avx2.c built as its AVX512-VNNI
 * variant on SIMDe's portable intrinsics (names td_quant_vnniemu_*), so that
 * test_quant_vnni can run the VNNI code path on CPUs without it. */
#define TD_QUANT_VNNI 1
#define TD_QUANT_SIMDE 1
#define TD_QUANT_ISA vnniemu
#include "quant/quant_blockwise_avx2.c"
