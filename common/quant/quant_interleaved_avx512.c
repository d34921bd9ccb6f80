/* quant_interleaved_avx512.c — the interleaved kernels of
 * quant_interleaved_avx2.c built for CPUs with AVX512-VNNI and AVX512-VL:
 * a group's integer sums come from a chain of vpdpbusd instead of maddubs,
 * int16 adds and madd. Same integers, same results. Built with the flags of
 * *_avx512.c in CMakeLists.txt; reached only through the table after the
 * CPU check.
 */
#define TD_QUANT_VNNI 1
#define TD_QUANT_ISA avx512
#include "quant_interleaved_avx2.c"
