/* quant_colwise_avx512.c — the column-wise FAST kernels of
 * quant_colwise_avx2.c on zmm for CPUs with AVX512-VNNI (and F, BW, VL):
 * 16 columns per vector, each block's integer sums from a chain of
 * vpdpbusd. Same integers and the same float steps per lane as the AVX2
 * build, so the same bits. Built with the flags of *_avx512.c in
 * CMakeLists.txt; reached only through the table after the CPU check.
 */
#define TD_QUANT_VNNI 1
#define TD_QUANT_ISA avx512
#include "quant_colwise_avx2.c"
