/* quant_kq_avx512.c — the K-quant kernels of quant_kq_avx2.c (Q4_K, Q5_K,
 * Q6_K against Q8_K) built for CPUs with AVX512-VNNI and AVX512-VL: per
 * sub-block and activation row, vpdpbusd gives the int32 sums of four code
 * products and vpdpwssd scales and accumulates them, two instructions where
 * AVX2 takes maddubs, madd and add. The integers per lane are the same, so
 * are the results. Built with the flags of *_avx512.c in CMakeLists.txt;
 * reached only through the table after the CPU check.
 */
#define TD_QUANT_VNNI 1
#define TD_QUANT_ISA avx512
#include "quant_kq_avx2.c"
