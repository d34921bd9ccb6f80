/* test_support.h — small process helpers the tests that start servers share
 * (test_etcd, test_rendezvous): a program on PATH, a free loopback port, a
 * sleep that survives signals, a child started with its output in a log
 * file, stopped by its PID, and a temp dir removed. Header-only: each test
 * is one executable, and these are a few lines each. */
#ifndef TD_TEST_SUPPORT_H
#define TD_TEST_SUPPORT_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The first executable `name` on PATH, into out; false when there is none. */
static inline bool test_find_on_path(const char *name, char *out, size_t size) {
    const char *path = getenv("PATH");
    if (!path) return false;
    char *copy = strdup(path);
    if (!copy) return false;
    bool found = false;
    for (char *save = NULL, *d = strtok_r(copy, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
        snprintf(out, size, "%s/%s", d, name);
        found = access(out, X_OK) == 0;
    }
    free(copy);
    return found;
}

/* A TCP port on 127.0.0.1 that was free a moment ago (-1 on failure). */
static inline int test_free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(s, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(s, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(s);
    return port;
}

static inline void test_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

/* Starts path with argv (argv[0] included, NULL-terminated), its stdout
 * and stderr appended to log. The child's PID, or -1. */
static inline pid_t test_spawn_logged(const char *path, char *const argv[], const char *log) {
    int logfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (logfd < 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(logfd, 1);
        dup2(logfd, 2);
        execv(path, argv);
        _exit(127);
    }
    close(logfd);
    return pid;
}

/* SIGTERM (hard: SIGKILL), then SIGKILL when it has not gone after 5 s;
 * returns once the child is reaped. */
static inline void test_stop_pid(pid_t pid, bool hard) {
    if (pid <= 0) return;
    kill(pid, hard ? SIGKILL : SIGTERM);
    int st;
    for (int i = 0; i < 50; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid) return;
        test_sleep_ms(100);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
}

static inline int test_rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* Removes a directory tree (a test's mkdtemp dir). */
static inline void test_rm_rf(const char *path) { nftw(path, test_rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

#endif
