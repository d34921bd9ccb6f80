/* cuda_tuning.c — the CUDA backend's tuning aids as the environment gives
 * them, parsed on the host in every build so that the parsing is tested on
 * machines without a GPU. None of them changes a bit of a pass's results:
 * they choose how kernels are launched and how rows are tiled.
 */
#include "cuda/cuda.h"

static bool tile_value(char c, int *out) {
    if (c != '1' && c != '2' && c != '4' && c != '8') return false;
    *out = c - '0';
    return true;
}

bool td_cuda_ksplit_parse(const char *s, int *ksplit) {
    if (!s || (s[0] != '1' && s[0] != '2' && s[0] != '4') || s[1] != 0) return false;
    *ksplit = s[0] - '0';
    return true;
}

bool td_cuda_tile_parse(const char *s, int *tile, int *tile_swiglu) {
    int a = 0, b = 0;
    if (!s || !tile_value(s[0], &a)) return false;
    if (s[1] == 0) b = a;
    else if (s[1] != ':' || !tile_value(s[2], &b) || s[3] != 0) return false;
    *tile = a;
    *tile_swiglu = b;
    return true;
}
