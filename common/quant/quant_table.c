/* quant_table.c — the type table: one row per GGUF type id with the block
 * layout facts and the kernels. There are three static tables, the scalar
 * reference, AVX2, and AVX2 with AVX512-VNNI for the integer-dot formats,
 * sharing the same facts. The first lookup picks one from a CPU check and
 * TD_KERNELS, once (pthread_once), so the choice is fixed for the life of the
 * process and the hot path reads no environment.
 * Ids we do not support (retired, IQ*, Q2_K/Q3_K, integer types) have no row.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "quant/quant_impl.h"

typedef struct quant_row {
    td_type_traits traits;
    td_matmul_fn matmul; /* NULL: one vec_dot per pair */
} quant_row;

/* Facts per type: name, block, bytes, weight_ok, to_float, vec_dot_type. */
#define FACTS(NAME, BE, BB, W, TO, VDT) \
    .name = NAME, .block_elems = BE, .block_bytes = BB, .weight_ok = W, .to_float = TO, .vec_dot_type = VDT
#define F_F32 FACTS("F32", 1, 4, true, td_quant_ref_to_f32, TD_TYPE_F32)
#define F_F16 FACTS("F16", 1, 2, true, td_quant_ref_to_f16, TD_TYPE_F16)
#define F_BF16 FACTS("BF16", 1, 2, true, td_quant_ref_to_bf16, TD_TYPE_BF16)
#define F_Q4_0 FACTS("Q4_0", 32, 18, true, td_quant_ref_to_q4_0, TD_TYPE_Q8_0)
#define F_Q4_1 FACTS("Q4_1", 32, 20, true, td_quant_ref_to_q4_1, TD_TYPE_Q8_1)
#define F_Q5_0 FACTS("Q5_0", 32, 22, true, td_quant_ref_to_q5_0, TD_TYPE_Q8_0)
#define F_Q5_1 FACTS("Q5_1", 32, 24, true, td_quant_ref_to_q5_1, TD_TYPE_Q8_1)
#define F_Q8_0 FACTS("Q8_0", 32, 34, true, td_quant_ref_to_q8_0, TD_TYPE_Q8_0)
#define F_Q8_1 FACTS("Q8_1", 32, 36, false, td_quant_ref_to_q8_1, TD_TYPE_Q8_1)
#define F_Q4_K FACTS("Q4_K", 256, 144, true, td_quant_ref_to_q4_k, TD_TYPE_Q8_K)
#define F_Q5_K FACTS("Q5_K", 256, 176, true, td_quant_ref_to_q5_k, TD_TYPE_Q8_K)
#define F_Q6_K FACTS("Q6_K", 256, 210, true, td_quant_ref_to_q6_k, TD_TYPE_Q8_K)
#define F_Q8_K FACTS("Q8_K", 256, 292, false, td_quant_ref_to_q8_k, TD_TYPE_Q8_K)

#define ROW(FACTS_, FROM, DOT, MM) { .traits = { FACTS_, .from_float = FROM, .vec_dot = DOT }, .matmul = MM }

static const quant_row ref_table[TD_TYPE_COUNT] = {
    [TD_TYPE_F32] = ROW(F_F32, td_quant_ref_from_f32, td_quant_ref_dot_f32, NULL),
    [TD_TYPE_F16] = ROW(F_F16, td_quant_ref_from_f16, td_quant_ref_dot_f16, NULL),
    [TD_TYPE_BF16] = ROW(F_BF16, td_quant_ref_from_bf16, td_quant_ref_dot_bf16, NULL),
    [TD_TYPE_Q4_0] = ROW(F_Q4_0, td_quant_ref_from_q4_0, td_quant_ref_dot_q4_0, NULL),
    [TD_TYPE_Q4_1] = ROW(F_Q4_1, td_quant_ref_from_q4_1, td_quant_ref_dot_q4_1, NULL),
    [TD_TYPE_Q5_0] = ROW(F_Q5_0, td_quant_ref_from_q5_0, td_quant_ref_dot_q5_0, NULL),
    [TD_TYPE_Q5_1] = ROW(F_Q5_1, td_quant_ref_from_q5_1, td_quant_ref_dot_q5_1, NULL),
    [TD_TYPE_Q8_0] = ROW(F_Q8_0, td_quant_ref_from_q8_0, td_quant_ref_dot_q8_0, NULL),
    [TD_TYPE_Q8_1] = ROW(F_Q8_1, td_quant_ref_from_q8_1, NULL, NULL),
    [TD_TYPE_Q4_K] = ROW(F_Q4_K, td_quant_ref_from_q4_k, td_quant_ref_dot_q4_k, NULL),
    [TD_TYPE_Q5_K] = ROW(F_Q5_K, td_quant_ref_from_q5_k, td_quant_ref_dot_q5_k, NULL),
    [TD_TYPE_Q6_K] = ROW(F_Q6_K, td_quant_ref_from_q6_k, td_quant_ref_dot_q6_k, NULL),
    [TD_TYPE_Q8_K] = ROW(F_Q8_K, td_quant_ref_from_q8_k, NULL, NULL),
};

#if defined(__x86_64__) || defined(__i386__)
#define HAVE_AVX2_TABLE 1
/* Weight-side quantizers stay the reference ones: they build test models,
 * not activations. The activation quantizers are bit-identical to the
 * reference, so the variant never changes what a kernel is fed. */
#define SIMD_COMMON_ROWS                                                                                  \
    [TD_TYPE_F32] = ROW(F_F32, td_quant_ref_from_f32, td_quant_avx2_dot_f32, NULL),                       \
    [TD_TYPE_F16] = ROW(F_F16, td_quant_avx2_from_f16, td_quant_avx2_dot_f16, NULL),                      \
    [TD_TYPE_BF16] = ROW(F_BF16, td_quant_ref_from_bf16, td_quant_avx2_dot_bf16, NULL),                   \
    [TD_TYPE_Q8_1] = ROW(F_Q8_1, td_quant_avx2_from_q8_1, NULL, NULL),                                    \
    [TD_TYPE_Q8_K] = ROW(F_Q8_K, td_quant_avx2_from_q8_k, NULL, NULL)
/* The integer-dot formats (legacy blocks and K-quants), from the AVX2 build
 * or the AVX512-VNNI one. */
#define DOT_ROW(T, t, FROM, isa) \
    [TD_TYPE_##T] = ROW(F_##T, FROM, td_quant_##isa##_dot_##t, td_quant_##isa##_matmul_##t)
#define DOT_ROWS(isa)                                   \
    DOT_ROW(Q4_0, q4_0, td_quant_ref_from_q4_0, isa),  \
    DOT_ROW(Q4_1, q4_1, td_quant_ref_from_q4_1, isa),  \
    DOT_ROW(Q5_0, q5_0, td_quant_ref_from_q5_0, isa),  \
    DOT_ROW(Q5_1, q5_1, td_quant_ref_from_q5_1, isa),  \
    DOT_ROW(Q8_0, q8_0, td_quant_avx2_from_q8_0, isa), \
    DOT_ROW(Q4_K, q4_k, td_quant_ref_from_q4_k, isa),  \
    DOT_ROW(Q5_K, q5_k, td_quant_ref_from_q5_k, isa),  \
    DOT_ROW(Q6_K, q6_k, td_quant_ref_from_q6_k, isa)

static const quant_row avx2_table[TD_TYPE_COUNT] = {SIMD_COMMON_ROWS, DOT_ROWS(avx2)};
/* The same with the integer sums on vpdpbusd (and, for the K-quants'
 * sub-block scales, vpdpwssd): the same results, fewer instructions per
 * block. */
static const quant_row avx512_table[TD_TYPE_COUNT] = {SIMD_COMMON_ROWS, DOT_ROWS(avx512)};
#endif

#if defined(HAVE_AVX2_TABLE) && defined(__x86_64__)
#define HAVE_AMX 1
/* AMX tiles may run: the CPU has AMX-TILE and AMX-INT8 (CPUID 7.0 EDX bits
 * 24, 25), the OS saves tile state (XCR0 bits 17, 18: a hypervisor may show
 * the CPUID bits without them, and then the first tile instruction faults),
 * and Linux grants this process the tile data state (arch_prctl
 * ARCH_REQ_XCOMP_PERM, a per-process permission, asked once here). */
static bool amx_usable(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 25))) return false;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false; /* OSXSAVE: xgetbv exists */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return false;
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}
#endif

/* What the process runs, chosen at its first lookup and kept: a table, and
 * whether the tiled kernels take AMX tiles (with the avx512 table only). */
typedef struct kernel_choice {
    const quant_row *table;
    bool amx;
} kernel_choice;

/* clang (14) knows no "f16c" feature string; every CPU with AVX2 has F16C. */
static kernel_choice choose_kernels(void) {
    /* TD_KERNELS=scalar|avx2|avx512 caps the set below what the CPU offers
     * (A/B timing, isolating a kernel bug; avx512: no AMX); it never raises
     * it */
    const char *cap = getenv("TD_KERNELS");
    kernel_choice k = {ref_table, false};
    if (cap && !strcmp(cap, "scalar")) return k;
#ifdef HAVE_AVX2_TABLE
    bool avx2_only = cap && !strcmp(cap, "avx2");
#ifdef __clang__
    bool f16c = true;
#else
    bool f16c = __builtin_cpu_supports("f16c");
#endif
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) {
        /* the runtime sets AVX-512 features only where the OS saves their
         * state (XCR0), so this also says the instructions may run */
        if (!avx2_only && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx512bw")) { /* the column-wise kernels' zmm byte ops */
            k.table = avx512_table;
#ifdef HAVE_AMX
            k.amx = !(cap && !strcmp(cap, "avx512")) && amx_usable();
#endif
            return k;
        }
        k.table = avx2_table;
        return k;
    }
#endif
    return k;
}

static kernel_choice chosen;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

static void choose_once(void) { chosen = choose_kernels(); }

static const quant_row *active_table(void) {
    pthread_once(&chosen_once, choose_once);
    return chosen.table;
}

#ifdef HAVE_AVX2_TABLE
static bool active_amx(void) {
    pthread_once(&chosen_once, choose_once);
    return chosen.amx;
}
#endif

static const quant_row *row_of(const quant_row *table, uint32_t type) {
    if (type >= TD_TYPE_COUNT || table[type].traits.name == NULL)
        return NULL;
    return &table[type];
}

const td_type_traits *td_quant_traits(uint32_t type) {
    const quant_row *r = row_of(active_table(), type);
    return r ? &r->traits : NULL;
}

const td_type_traits *td_quant_traits_ref(uint32_t type) {
    const quant_row *r = row_of(ref_table, type);
    return r ? &r->traits : NULL;
}

const char *td_quant_kernel_name(void) {
#ifdef HAVE_AVX2_TABLE
    const quant_row *t = active_table();
    if (t == avx2_table) return "avx2";
    if (t == avx512_table) return "avx2+avx512vnni";
#endif
    return "scalar";
}

bool td_quant_uses_amx(void) {
#ifdef HAVE_AVX2_TABLE
    return active_amx();
#else
    return false;
#endif
}

td_matmul_fn td_quant_matmul_kernel(uint32_t type, td_numerics order) {
    const quant_row *table = active_table(), *r = row_of(table, type);
    if (order == TD_NUMERICS_TP_INVARIANT) order = TD_NUMERICS_FAST;
#ifdef HAVE_AVX2_TABLE
    if (order == TD_NUMERICS_FAST && table == avx2_table) {
        if (type == TD_TYPE_Q4_1) return td_quant_avx2_matmul_q4_1_colwise;
        if (type == TD_TYPE_Q8_0) return td_quant_avx2_matmul_q8_0_colwise;
    }
    if (order == TD_NUMERICS_FAST && table == avx512_table) {
        if (type == TD_TYPE_Q4_1) return td_quant_avx512_matmul_q4_1_colwise;
        if (type == TD_TYPE_Q8_0) return td_quant_avx512_matmul_q8_0_colwise;
    }
#else
    (void)order;
#endif
    return r ? r->matmul : NULL;
}

td_tiled_fn td_quant_tiled_kernel(uint32_t type) {
#ifdef HAVE_AVX2_TABLE
    const quant_row *table = active_table();
    if (table == avx2_table) {
        if (type == TD_TYPE_Q4_1) return td_quant_avx2_matmul_q4_1_tiled;
        if (type == TD_TYPE_Q8_0) return td_quant_avx2_matmul_q8_0_tiled;
    }
    if (table == avx512_table && active_amx()) {
        if (type == TD_TYPE_Q4_1) return td_quant_amx_matmul_q4_1_tiled;
        if (type == TD_TYPE_Q8_0) return td_quant_amx_matmul_q8_0_tiled;
    }
    if (table == avx512_table) {
        if (type == TD_TYPE_Q4_1) return td_quant_avx512_matmul_q4_1_tiled;
        if (type == TD_TYPE_Q8_0) return td_quant_avx512_matmul_q8_0_tiled;
    }
#else
    (void)type;
#endif
    return NULL;
}

const char *td_numerics_name(td_numerics order) {
    return order == TD_NUMERICS_FAST            ? "fast"
           : order == TD_NUMERICS_LLAMACPP      ? "llamacpp"
           : order == TD_NUMERICS_TP_INVARIANT  ? "tp-invariant"
                                                : "reference";
}

size_t td_quant_row_bytes(uint32_t type, int64_t n) {
    const td_type_traits *t = td_quant_traits_ref(type);
    if (!t || n < 0 || n % t->block_elems != 0)
        return 0;
    uint64_t bytes;
    if (!td_mul_u64((uint64_t)(n / t->block_elems), t->block_bytes, &bytes) || bytes > SIZE_MAX)
        return 0;
    return (size_t)bytes;
}

int td_quant_activations(uint32_t wtype, const float *x, int64_t n_in, int64_t n_rows, void *dst) {
    const td_type_traits *w = td_quant_traits(wtype);
    if (w == NULL || n_rows < 0)
        return TD_E_ARG;
    const td_type_traits *a = td_quant_traits(w->vec_dot_type);
    size_t rb = td_quant_row_bytes(w->vec_dot_type, n_in);
    if (a == NULL || !a->from_float || rb == 0 || (n_rows > 0 && (!x || !dst)))
        return TD_E_ARG;
    for (int64_t r = 0; r < n_rows; r++)
        a->from_float(x + r * n_in, (uint8_t *)dst + (size_t)r * rb, n_in);
    return TD_OK;
}
