/* log.c — timestamped log lines for the service programs (worker,
 * coordinator, CLI client). One write per line, so lines of concurrent
 * threads never interleave mid-line.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"

/* The process's log configuration: the one piece of global mutable state
 * here, written once by td_log_setup before threads start. */
static struct {
    char name[32];
    td_log_level min;
} log_config = {"tandem", TD_LOG_INFO};

void td_log_setup(const char *process_name, td_log_level min_level) {
    snprintf(log_config.name, sizeof log_config.name, "%s", process_name ? process_name : "tandem");
    log_config.min = min_level;
}

bool td_log_level_parse(const char *s, td_log_level *out) {
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (s && strcmp(s, names[i]) == 0) { *out = (td_log_level)i; return true; }
    return false;
}

void td_log(td_log_level level, const char *req, const char *fmt, ...) {
    if (level < log_config.min) return;
    static const char *const tags[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    char line[2048];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s[%d] %s ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000),
                     log_config.name, (int)getpid(), tags[level < 0 || level > 3 ? 1 : level]);
    if (req && req[0] && n > 0 && (size_t)n < sizeof line)
        n += snprintf(line + n, sizeof line - (size_t)n, "req=%s ", req);
    if (n > 0 && (size_t)n < sizeof line) {
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        va_end(ap);
        n = m < 0 ? n : n + m;
    }
    if (n < 0) return;
    if ((size_t)n >= sizeof line - 1) n = (int)sizeof line - 2;
    line[n++] = '\n';
    /* one write(2): a line is never torn by another thread's */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}
