/* check_exit.h — CHECK(cond, fmt, ...) for the standalone test programs that
 * run outside cmocka (under mpirun, on the CUDA emulator, on a lent GPU): a
 * failed check prints where and why, with the rank once the program has set
 * check_rank, and exits 1 at once — without shutting MPI down, so mpirun ends
 * every rank instead of leaving the others waiting in a collective. One
 * program per translation unit, so the rank lives here. */
#ifndef TD_CHECK_EXIT_H
#define TD_CHECK_EXIT_H

#include <stdio.h>
#include <stdlib.h>

static int check_rank = -1;

/* one write per failure, so ranks' reports do not interleave (a reason
 * longer than the buffer is cut) */
#define CHECK(cond, ...)                                                                                         \
    do {                                                                                                         \
        if (!(cond)) {                                                                                           \
            char check_why_[1024];                                                                               \
            if (snprintf(check_why_, sizeof check_why_, __VA_ARGS__) < 0) check_why_[0] = 0;                     \
            if (check_rank >= 0)                                                                                 \
                fprintf(stderr, "rank %d: %s:%d: check failed: %s: %s\n", check_rank, __FILE__, __LINE__, #cond, \
                        check_why_);                                                                             \
            else                                                                                                 \
                fprintf(stderr, "%s:%d: check failed: %s: %s\n", __FILE__, __LINE__, #cond, check_why_);         \
            exit(1);                                                                                             \
        }                                                                                                        \
    } while (0)

#endif
