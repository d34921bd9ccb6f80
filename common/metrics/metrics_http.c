/* metrics_http.c — the /metrics endpoint: plain HTTP/1.1, GET /metrics only,
 * one connection at a time on one thread, "Connection: close" after every
 * answer.
 *
 * Why so small: a scrape every few seconds from one or two Prometheus
 * servers is the whole workload, and a tiny parser is one that tests can
 * cover completely. Every connection gets a deadline (TD_METRICS_IO_MS) for
 * its request and for its answer, so a client that sends nothing or reads
 * nothing costs a scrape a few seconds, never the service anything.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

#define TD_METRICS_IO_MS 3000      /* per connection: reading the request, writing the answer */
#define TD_METRICS_MAX_HEAD 8192   /* request head bytes at most */
#define TD_METRICS_MAX_TARGET 1024 /* request target bytes at most */

struct td_metrics_server {
    td_metrics_registry *reg;
    td_metrics_collect_fn collect;
    void *user;
    int fd;         /* listening socket */
    int wake[2];    /* a byte on wake[1] stops the thread */
    int port;
    pthread_t thread;
};

/* ---- request parsing ---- */

static bool is_tchar(char c) {
    /* RFC 9110 token characters (method names, header names) */
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* The end of the head: the offset just after the blank line, or 0. Lines
 * may end in CRLF or, leniently, LF. */
static size_t head_end(const char *buf, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (buf[i] != '\n') continue;
        if (i + 1 < n && buf[i + 1] == '\n') return i + 2;
        if (i + 2 < n && buf[i + 1] == '\r' && buf[i + 2] == '\n') return i + 3;
    }
    return 0;
}

int td_metrics_http_check(const char *buf, size_t n, size_t max_head) {
    size_t end = head_end(buf, n);
    if (!end) return n > max_head ? 431 : 0;
    if (end > max_head) return 431;
    /* request line: METHOD SP TARGET SP HTTP/x.y (CR) LF */
    size_t i = 0;
    while (i < end && is_tchar(buf[i])) i++;
    size_t method_len = i;
    if (method_len == 0 || i >= end || buf[i] != ' ') return 400;
    size_t t0 = ++i;
    while (i < end && buf[i] > ' ' && buf[i] != 0x7f) i++;
    size_t target_len = i - t0;
    if (target_len == 0 || i >= end || buf[i] != ' ') return 400;
    if (target_len > TD_METRICS_MAX_TARGET) return 414;
    size_t v0 = ++i;
    while (i < end && buf[i] != '\r' && buf[i] != '\n') i++;
    size_t v_len = i - v0;
    if (i < end && buf[i] == '\r') i++;
    if (i >= end || buf[i] != '\n') return 400;
    i++;
    if (v_len != 8 || memcmp(buf + v0, "HTTP/", 5) || buf[v0 + 5] < '0' || buf[v0 + 5] > '9' ||
        buf[v0 + 6] != '.' || buf[v0 + 7] < '0' || buf[v0 + 7] > '9')
        return 400;
    if (memcmp(buf + v0, "HTTP/1.0", 8) && memcmp(buf + v0, "HTTP/1.1", 8)) return 505;
    /* header lines: NAME ":" value, no control characters but tab; the
     * blank line ends them */
    while (i < end) {
        size_t l0 = i;
        while (i < end && buf[i] != '\n') i++;
        size_t l_end = i++; /* at '\n' */
        if (l_end > l0 && buf[l_end - 1] == '\r') l_end--;
        if (l_end == l0) break; /* the blank line */
        size_t k = l0;
        while (k < l_end && is_tchar(buf[k])) k++;
        if (k == l0 || buf[k] != ':') return 400; /* also rejects obsolete line folding */
        for (k++; k < l_end; k++) {
            unsigned char c = (unsigned char)buf[k];
            if ((c < 0x20 && c != '\t') || c == 0x7f) return 400;
        }
    }
    const char *target = buf + t0;
    size_t path_len = 0;
    while (path_len < target_len && target[path_len] != '?') path_len++;
    bool is_metrics = path_len == 8 && !memcmp(target, "/metrics", 8);
    if (!is_metrics) return 404;
    if (method_len != 3 || memcmp(buf, "GET", 3)) return 405;
    return 200;
}

/* ---- the server ---- */

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for fd to be readable (in) or writable until deadline; false on
 * timeout, error, or a stop request. */
static bool wait_fd(const td_metrics_server *s, int fd, bool in, int64_t deadline) {
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) return false;
        struct pollfd p[2] = {{.fd = fd, .events = in ? POLLIN : POLLOUT}, {.fd = s->wake[0], .events = POLLIN}};
        int rc = poll(p, 2, (int)left);
        if (rc < 0 && errno == EINTR) continue;
        if (rc <= 0 || p[1].revents) return false;
        return true;
    }
}

static bool send_all(const td_metrics_server *s, int fd, const char *p, size_t n, int64_t deadline) {
    while (n > 0) {
        if (!wait_fd(s, fd, false, deadline)) return false;
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

static const char *reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 505: return "HTTP Version Not Supported";
    default: return "Internal Server Error";
    }
}

static void answer(const td_metrics_server *s, int fd, int status, const char *body, size_t len, int64_t deadline) {
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sConnection: close\r\n\r\n",
                     status, reason(status),
                     status == 200 ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8", len,
                     status == 405 ? "Allow: GET\r\n" : "");
    if (send_all(s, fd, head, (size_t)n, deadline)) send_all(s, fd, body, len, deadline);
}

static void serve_conn(td_metrics_server *s, int fd) {
    int64_t deadline = now_ms() + TD_METRICS_IO_MS;
    char req[TD_METRICS_MAX_HEAD + 1];
    size_t n = 0;
    int status = 0;
    while (status == 0) {
        if (n == sizeof req) { status = 431; break; }
        if (!wait_fd(s, fd, true, deadline)) { status = 408; break; }
        ssize_t r = recv(fd, req + n, sizeof req - n, MSG_DONTWAIT);
        if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        if (r <= 0) { /* closed before a full head: malformed if anything came */
            if (n) status = 400;
            break;
        }
        n += (size_t)r;
        status = td_metrics_http_check(req, n, TD_METRICS_MAX_HEAD);
    }
    if (status == 0) return; /* the client left without asking anything */
    if (status != 200) {
        char body[96];
        int bl = snprintf(body, sizeof body, "%d %s: only GET /metrics is served here\n", status, reason(status));
        answer(s, fd, status, body, (size_t)bl, deadline);
        return;
    }
    if (s->collect) s->collect(s->user);
    char *text = NULL;
    size_t len = 0;
    if (td_metrics_render(s->reg, &text, &len, NULL)) {
        static const char oom[] = "out of memory\n";
        answer(s, fd, 500, oom, sizeof oom - 1, deadline);
        return;
    }
    answer(s, fd, 200, text, len, deadline);
    free(text);
}

static void drain(const td_metrics_server *s, int fd) {
    char sink[4096];
    int64_t deadline = now_ms() + 500;
    for (size_t total = 0; total < (1u << 20);) {
        if (!wait_fd(s, fd, true, deadline)) return;
        ssize_t r = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        if (r <= 0) return;
        total += (size_t)r;
    }
}

static void *server_thread(void *arg) {
    td_metrics_server *s = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = s->fd, .events = POLLIN}, {.fd = s->wake[0], .events = POLLIN}};
        int rc = poll(p, 2, -1);
        if (rc < 0 && errno == EINTR) continue;
        if (rc < 0 || p[1].revents) break;
        int c = accept(s->fd, NULL, NULL);
        if (c < 0) continue; /* the client left, or out of descriptors for now */
        serve_conn(s, c);
        /* end of stream for the client, then read what it still sends (a
         * refused request's body, the rest of an oversized head) for a
         * moment: closing with unread bytes would reset the connection and
         * could destroy the answer before the client read it */
        shutdown(c, SHUT_WR);
        drain(s, c);
        close(c);
    }
    return NULL;
}

/* "HOST:PORT", ":PORT", "[V6]:PORT" into host (NULL = any) and port. */
static int split_addr(const char *addr, char *host, size_t host_cap, const char **port) {
    const char *colon = strrchr(addr, ':');
    if (!colon || !colon[1]) return -1;
    const char *h = addr;
    size_t hl = (size_t)(colon - addr);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') { h++; hl -= 2; }
    if (hl >= host_cap) return -1;
    memcpy(host, h, hl);
    host[hl] = 0;
    *port = colon + 1;
    return 0;
}

td_metrics_server *td_metrics_server_start(td_metrics_registry *r, const char *addr, td_metrics_collect_fn collect,
                                           void *user, td_err *err) {
    char host[256];
    const char *port = NULL;
    if (!r || !addr || split_addr(addr, host, sizeof host, &port)) {
        td_err_set(err, TD_E_ARG, "metrics: address \"%s\" is not HOST:PORT", addr ? addr : "");
        return NULL;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE},
                    *ai = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
    if (gai) {
        td_err_set(err, TD_E_ARG, "metrics: %s: %s", addr, gai_strerror(gai));
        return NULL;
    }
    td_metrics_server *s = calloc(1, sizeof *s);
    if (!s) {
        freeaddrinfo(ai);
        td_err_set(err, TD_E_NOMEM, "metrics: out of memory");
        return NULL;
    }
    s->reg = r;
    s->collect = collect;
    s->user = user;
    s->fd = s->wake[0] = s->wake[1] = -1;
    int saved = 0;
    for (struct addrinfo *a = ai; a && s->fd < 0; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) { saved = errno; continue; }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 16) == 0) {
            s->fd = fd;
        } else {
            saved = errno;
            close(fd);
        }
    }
    freeaddrinfo(ai);
    if (s->fd < 0) {
        td_err_set(err, TD_E_IO, "metrics: cannot listen on %s: %s", addr, strerror(saved));
        goto fail;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(s->fd, (struct sockaddr *)&ss, &sl) == 0)
        s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    if (pipe(s->wake) != 0) {
        td_err_set(err, TD_E_IO, "metrics: pipe: %s", strerror(errno));
        goto fail;
    }
    if (pthread_create(&s->thread, NULL, server_thread, s) != 0) {
        td_err_set(err, TD_E_NOMEM, "metrics: cannot start a thread");
        goto fail;
    }
    return s;
fail:
    if (s->fd >= 0) close(s->fd);
    if (s->wake[0] >= 0) close(s->wake[0]);
    if (s->wake[1] >= 0) close(s->wake[1]);
    free(s);
    return NULL;
}

int td_metrics_server_port(const td_metrics_server *s) { return s ? s->port : 0; }

void td_metrics_server_stop(td_metrics_server *s) {
    if (!s) return;
    char b = 1;
    while (write(s->wake[1], &b, 1) < 0 && errno == EINTR) {
    }
    pthread_join(s->thread, NULL);
    close(s->fd);
    close(s->wake[0]);
    close(s->wake[1]);
    free(s);
}
