/* fuzz_metrics_http.c — libFuzzer target for the /metrics endpoint's request
 * parser (td_metrics_http_check): any bytes, fed whole and split at every
 * tenth byte as a connection would deliver them. Besides the sanitizers, it
 * traps on an answer outside the statuses the endpoint sends, on a prefix
 * judged complete (non-zero) while the whole is judged differently (a verdict
 * may not change once given), and on a refusal of an accepted request's
 * head by a larger size limit.
 * Build: clang -fsanitize=fuzzer,address,undefined (CMake: -DTANDEM_FUZZ=ON).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/metrics.h"
#include "fuzz_check.h"


static int known(int st) {
    return st == 0 || st == 200 || st == 400 || st == 404 || st == 405 || st == 414 || st == 431 || st == 505;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a copy of exactly size bytes, so reads past the end are caught */
    char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    int whole = td_metrics_http_check(buf, size, 8192);
    FZ_CHECK(known(whole));
    for (size_t n = 0; n < size; n += 10) {
        int part = td_metrics_http_check(buf, n, 8192);
        FZ_CHECK(known(part));
        /* once the head is complete (or too big), more bytes change nothing */
        if (part != 0) FZ_CHECK(part == whole);
    }
    if (whole == 200) FZ_CHECK(td_metrics_http_check(buf, size, 1 << 20) == 200);
    free(buf);
    return 0;
}
