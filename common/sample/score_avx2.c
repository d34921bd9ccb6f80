/* score_avx2.c — the normalizer's rounds of lanes (sample_norm.h) compiled
 * for AVX2: four lanes to a vector, the same operations, the same bits. */
#include "sample/sample_norm.h"

int32_t td_sample_norm_rounds_avx2(const float *logits, int32_t n, float max, double *lane) {
    return td_sample_norm_rounds_body(logits, n, max, lane);
}
