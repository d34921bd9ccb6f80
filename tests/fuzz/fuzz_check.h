/* fuzz_check.h — the one check every fuzz target uses: a failed condition
 * says which (file and line) and traps, so libFuzzer keeps the input. */
#ifndef TD_FUZZ_CHECK_H
#define TD_FUZZ_CHECK_H

#include <stdio.h>

#define FZ_CHECK(c)                                                                  \
    do {                                                                             \
        if (!(c)) {                                                                  \
            fprintf(stderr, "fuzz check failed: %s (%s:%d)\n", #c, __FILE__, __LINE__); \
            __builtin_trap();                                                        \
        }                                                                            \
    } while (0)

#endif
