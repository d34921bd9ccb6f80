/* vnni_emul_colwise.c — quant_colwise_avx2.c built as its AVX512-VNNI
 * variant (zmm, 16 columns) on SIMDe's portable intrinsics (names
 * td_quant_vnniemu_*), for test_quant_vnni. */
#define TD_QUANT_VNNI 1
#define TD_QUANT_SIMDE 1
#define TD_QUANT_ISA vnniemu
#include "quant/quant_colwise_avx2.c"
