/* net_signals.c — SIGINT/SIGTERM for a gRPC process: blocked in every thread
 * (gRPC's threads inherit the mask of the thread that creates them) and
 * taken synchronously by one thread with sigwait/sigtimedwait, so no handler
 * ever runs inside gRPC's code. */
#include <errno.h>
#include <signal.h>
#include <time.h>

#include <pthread.h>

#include "net/net.h"

static void stop_set(sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
}

void td_net_signals_block(void) {
    sigset_t set;
    stop_set(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int td_net_signals_wait(int32_t timeout_ms) {
    sigset_t set;
    stop_set(&set);
    if (timeout_ms < 0) {
        int sig = 0;
        while (sigwait(&set, &sig) != 0) {
        }
        return sig;
    }
    struct timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (long)(timeout_ms % 1000) * 1000000L};
    for (;;) {
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig > 0) return sig;
        if (errno == EAGAIN) return 0;
        /* EINTR (another signal's handler ran): wait again; the time spent
         * is lost, which only lengthens the wait a caller allowed */
    }
}
