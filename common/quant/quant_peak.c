/* quant_peak.c — the integer dot instructions the matmul kernels are built
 * on, each run back to back on independent accumulators so that a caller
 * timing td_quant_peak_run learns one core's peak int8 multiply-add rate:
 * the ceiling `tandem bench kernels` compares the kernels against. Only the
 * forms this CPU runs are offered (the same checks as quant_table.c).
 */
#include <string.h>

#include "quant/quant_impl.h"

typedef struct peak_form {
    const char *name;
    int64_t macs_per_iter; /* chains x products per instruction */
    int64_t (*run)(const uint8_t *src, int64_t iters);
    bool (*cpu_ok)(void);
} peak_form;

#if defined(__x86_64__) || defined(__i386__)
static bool has_avx2(void) { return __builtin_cpu_supports("avx2"); }
static bool has_vnni512(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("avx512vl");
}
static const peak_form forms[] = {
    {"vpdpbusd zmm", 12 * 64, td_quant_avx512_peak_dpbusd_zmm, has_vnni512},
    {"vpdpbusd ymm", 12 * 32, td_quant_avx512_peak_dpbusd_ymm, has_vnni512},
    {"vpmaddubsw+vpmaddwd ymm", 8 * 32, td_quant_avx2_peak_maddubs_ymm, has_avx2},
};
#define N_FORMS ((int)(sizeof forms / sizeof forms[0]))
#else
static const peak_form *forms = NULL;
#define N_FORMS 0
#endif

bool td_quant_peak_form(int form, const char **name, int64_t *macs_per_iter) {
    if (form < 0 || form >= N_FORMS || !forms[form].cpu_ok()) return false;
    if (name) *name = forms[form].name;
    if (macs_per_iter) *macs_per_iter = forms[form].macs_per_iter;
    return true;
}

int64_t td_quant_peak_run(int form, int64_t iters) {
    if (!td_quant_peak_form(form, NULL, NULL) || iters < 0) return 0;
    /* varied bytes, so no instruction sees a constant it could skip */
    uint8_t src[128];
    for (int i = 0; i < 128; i++) src[i] = (uint8_t)(i * 37 + 11);
    return forms[form].run(src, iters);
}
