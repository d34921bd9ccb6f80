/* quant_blockwise_avx512.c — the reference-order Q4_1/Q8_0 kernels of
 * quant_blockwise_avx2.c built for CPUs with AVX512-VNNI and AVX512-VL: each
 * block's eight int32 sums come from one vpdpbusd instead of maddubs + madd.
 * The integers are the same, so are the results (llama.cpp's own x86 build
 * takes vpdpbusd on such CPUs too). Built with the flags of *_avx512.c in
 * CMakeLists.txt; reached only through the table after the CPU check.
 */
#define TD_QUANT_VNNI 1
#define TD_QUANT_ISA avx512
#include "quant_blockwise_avx2.c"
