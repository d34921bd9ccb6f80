/* net.h — gRPC for tandem: a server with typed unary and server-streaming
 * handlers, and a client for the same two call shapes, over gRPC core's C
 * API and protobuf-c messages. Every grpc_* call of the project lives in
 * common/net/; the rest of the code sees only this header (and etcd.h).
 *
 * Server model: one thread per call in flight, at most max_calls of them
 * (a call beyond that gets RESOURCE_EXHAUSTED at once, with a retry hint in
 * its message). A handler runs on its call's thread and may block: sending a
 * message returns when gRPC took it, or fails when the client is gone
 * (cancelled, deadline passed, connection lost). Handlers therefore never
 * run on gRPC's own threads, and a slow handler delays only its own call.
 *
 * Status codes are gRPC's (TD_NET_*), so a client sees exactly what a
 * handler chose. Messages bigger than max_message_bytes are refused by gRPC
 * itself (RESOURCE_EXHAUSTED); bytes that do not unpack as the method's
 * request type get INVALID_ARGUMENT before any handler runs.
 *
 * Security: a port may be TLS (td_net_server_listen_tls, optionally asking
 * for client certificates) and a server may require bearer tokens for all
 * but its exempt (health) methods; a channel may be TLS or mutual TLS.
 *
 * Threads: a td_net_server and a td_net_channel may be used from any thread.
 * A td_net_call belongs to the thread running its handler; a td_net_stream
 * (client side) to one thread at a time.
 */
#ifndef TD_NET_H
#define TD_NET_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "util/util.h"

/* gRPC status codes (the numbers are gRPC's). */
enum {
    TD_NET_OK = 0,
    TD_NET_CANCELLED = 1,
    TD_NET_UNKNOWN = 2,
    TD_NET_INVALID_ARGUMENT = 3,
    TD_NET_DEADLINE_EXCEEDED = 4,
    TD_NET_NOT_FOUND = 5,
    TD_NET_ALREADY_EXISTS = 6,
    TD_NET_PERMISSION_DENIED = 7,
    TD_NET_RESOURCE_EXHAUSTED = 8,
    TD_NET_FAILED_PRECONDITION = 9,
    TD_NET_ABORTED = 10,
    TD_NET_OUT_OF_RANGE = 11,
    TD_NET_UNIMPLEMENTED = 12,
    TD_NET_INTERNAL = 13,
    TD_NET_UNAVAILABLE = 14,
    TD_NET_UNAUTHENTICATED = 16,
};

/* A call's outcome as the client saw it (or as a handler set it). */
typedef struct td_net_status {
    int code;        /* TD_NET_* */
    char msg[256];   /* gRPC's status details, "" when OK */
} td_net_status;

const char *td_net_code_name(int code); /* "OK", "INVALID_ARGUMENT", ... */

/* Calls gRPC's global init once per process (reference counted, like
 * grpc_init); every create below does it, so callers rarely need to. */
void td_net_init(void);
void td_net_shutdown(void);

/* ---- transport security ----
 * TLS for a server port or a channel. Files are PEM; they are read when the
 * port is bound or the channel opened (a file that cannot be read is an
 * error naming it), and the key's bytes are wiped from our memory once gRPC
 * has its copy. */
typedef struct td_net_tls {
    /* Server: its certificate chain and private key (both required).
     * Client: a certificate of its own for mutual TLS (both or neither). */
    const char *cert_file, *key_file;
    /* Server: the CA that client certificates must chain to (NULL: client
     * certificates are neither asked for nor checked). Client: the roots
     * the server's certificate must chain to (NULL: the system's roots). */
    const char *ca_file;
    /* Server: a client without a certificate from ca_file is refused during
     * the handshake (needs ca_file). Without it a client certificate is
     * checked only when one is presented. */
    bool require_client_cert;
    /* Client: the name the server's certificate must carry, instead of the
     * target's host (tests; a server reached by an address not in its
     * certificate). NULL: the target's host. */
    const char *server_name;
} td_net_tls;

/* Bearer tokens: reads a file of tokens, one a line (blank lines and lines
 * starting with '#' are skipped; surrounding white space is dropped). At
 * least one token is required. Free with td_net_tokens_free, which wipes
 * them. */
/* Checks that the settings' files can be read and make credentials (for a
 * server port when server, else for a channel), without using them: for
 * channels opened long after startup. 0, or an error naming the file. */
int td_net_tls_check(const td_net_tls *tls, bool server, td_err *err);

int td_net_tokens_load(const char *path, char ***tokens, size_t *n_tokens, td_err *err);
void td_net_tokens_free(char **tokens, size_t n_tokens);

/* Metadata sent with a call (etcd's auth token; "authorization" with
 * "Bearer <token>" for a tandem server that wants one); may be NULL. */
typedef struct td_net_metadata {
    const char *key, *value;
} td_net_metadata;

/* ---- server ---- */

typedef struct td_net_server td_net_server;
typedef struct td_net_call td_net_call;

typedef struct td_net_server_opts {
    int32_t max_calls;            /* calls in flight at most (0 = 64) */
    int32_t max_message_bytes;    /* largest message received or sent (0 = 16 MiB) */
    const char *name;             /* for log lines ("coordinator", "worker", "health") */
    /* Bearer-token authentication (NULL / 0: none). A call must carry the
     * metadata "authorization: Bearer <one of tokens>", or it ends with
     * UNAUTHENTICATED before its request is read or any handler runs. The
     * server keeps copies; tokens are never logged. */
    const char *const *tokens;
    size_t n_tokens;
    /* Methods whose path starts with this need no token (NULL:
     * "/grpc.health.v1.", so that probes work without secrets; "" would
     * exempt everything, so it is taken as NULL too). */
    const char *auth_exempt_prefix;
    /* Connections are closed (GOAWAY, calls in flight get as long again to
     * finish) after about this long; 0 = never. Long-lived HTTP/2 clients
     * then reconnect, and a load balancer spreads them over replicas. */
    int32_t max_connection_age_ms;
    /* Calls in flight per token at most (0 = only max_calls): one client
     * cannot take every slot. Beyond it: RESOURCE_EXHAUSTED, as when the
     * server is full. Calls of exempt methods are not counted. */
    int32_t max_calls_per_token;
} td_net_server_opts;

/* The handler of a unary method answers with td_net_call_reply or
 * td_net_call_fail; a streaming one sends with td_net_call_send and ends
 * with td_net_call_finish (or td_net_call_fail). Returning without
 * answering sends INTERNAL. `request` is the unpacked message (descriptor
 * given at registration), freed by the layer after the handler returns. */
typedef void (*td_net_handler)(td_net_call *call, const ProtobufCMessage *request, void *user);

/* NULL on failure (out of memory: err). */
td_net_server *td_net_server_create(const td_net_server_opts *opts, td_err *err);
/* Registers a method before start: path "/tandem.v1.Inference/Generate",
 * request type, whether the response is a stream. Unknown methods get
 * UNIMPLEMENTED. */
int td_net_server_add(td_net_server *s, const char *path, const ProtobufCMessageDescriptor *request_type,
                      bool server_streaming, td_net_handler handler, void *user, td_err *err);
/* Binds a plaintext port ("127.0.0.1:0" picks a free one). Returns the
 * port bound (> 0) or a negative TD_E_* with err set. Before start. */
int td_net_server_listen(td_net_server *s, const char *addr, td_err *err);
/* The same over TLS (tls->cert_file and key_file required; see td_net_tls
 * for client certificates). A server may listen on both kinds of port. */
int td_net_server_listen_tls(td_net_server *s, const char *addr, const td_net_tls *tls, td_err *err);
int td_net_server_start(td_net_server *s, td_err *err);
/* Stops accepting calls, lets calls in flight finish for up to grace_ms,
 * then cancels the rest (their sends fail, td_net_call_cancelled turns
 * true) and waits for their handlers to return. */
void td_net_server_shutdown(td_net_server *s, int32_t grace_ms);
void td_net_server_destroy(td_net_server *s); /* shuts down first if needed; accepts NULL */
/* Calls in flight now. */
int32_t td_net_server_active(const td_net_server *s);

/* Inside a handler: */
/* "/tandem.v1.Worker/Verify" */
const char *td_net_call_method(const td_net_call *c);
/* The client's address ("ipv4:127.0.0.1:53412"). */
const char *td_net_call_peer(const td_net_call *c);
/* Milliseconds left until the client's deadline; INT64_MAX when none. Pass
 * it on to downstream calls so deadlines propagate. */
int64_t td_net_call_deadline_ms(const td_net_call *c);
/* True once the client cancelled, the deadline passed, or the server is
 * shutting down and its grace period is over (during the grace the call may
 * still finish): a long handler polls it between steps. */
bool td_net_call_cancelled(td_net_call *c);
/* Unary answer: the message and status OK. Returns 0, or a negative
 * TD_E_* when the call is already gone. */
int td_net_call_reply(td_net_call *c, const ProtobufCMessage *response);
/* Streaming: one message; blocks until gRPC has taken it (flow control is a
 * slow reader's bounded buffer). Fails (negative) when the call is gone or
 * when the write did not complete within write_timeout_ms (0 = no limit),
 * which cancels the call. */
int td_net_call_send(td_net_call *c, const ProtobufCMessage *msg, int32_t write_timeout_ms);
/* Ends a stream with OK. */
int td_net_call_finish(td_net_call *c);
/* Ends any call with an error status (code != OK) and a message. */
int td_net_call_fail(td_net_call *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- handlers without gRPC (tests and fuzz targets) ----
 * A fake call stands where a client's call would: handlers registered on a
 * server (started or not) run on it through td_net_server_dispatch, exactly
 * as the server runs them for a call off the wire, and whatever they answer
 * is recorded in memory instead of sent. No gRPC object is involved, so a
 * server that was never started can serve them. The live path does not
 * change: a call from the wire never has a fake record. */

/* What a fake call carries in, as a client would. */
typedef struct td_net_fake_opts {
    const char *peer;            /* td_net_call_peer (NULL: "fake") */
    int64_t deadline_ms;         /* from creation; <= 0: none. */
    bool expired;                /* the deadline has passed already */
    bool gone;                   /* the client is gone: cancelled true, sends fail */
    int32_t max_sends;           /* > 0: the client goes after this many streamed messages */
    const td_net_metadata *md;   /* copied ("authorization: Bearer ..." is checked) */
    size_t n_md;
} td_net_fake_opts;

/* A fresh fake call (opts may be NULL: no deadline, a client that stays).
 * NULL when out of memory (err). One dispatch per call. */
td_net_call *td_net_fake_call_create(const td_net_fake_opts *opts, td_err *err);
void td_net_fake_call_destroy(td_net_call *c); /* accepts NULL */

/* What a registered method is (for a harness choosing among them). */
typedef struct td_net_method_info {
    const char *path;                          /* owned by the server */
    const ProtobufCMessageDescriptor *type;    /* its request type */
    bool streaming;
} td_net_method_info;
/* The registered methods in registration order: returns how many there
 * are, filling out[0 .. min(that, max)). */
size_t td_net_server_methods(const td_net_server *s, td_net_method_info *out, size_t max);

/* Runs the method at path on the fake call c with the request given as the
 * bytes a client sent: UNIMPLEMENTED for an unknown path, the bearer-token
 * check and per-token cap when the server has tokens, INVALID_ARGUMENT
 * ("malformed request") when the bytes do not unpack as the method's request
 * type, else the handler; then, as the server does, DEADLINE_EXCEEDED or
 * INTERNAL for a handler that returned without answering. Returns the
 * final status code (as td_net_fake_call_status gives it), or TD_E_ARG for
 * a call that is not fake or was dispatched before. */
int td_net_server_dispatch(td_net_server *s, const char *path, const uint8_t *bytes, size_t len, td_net_call *c);

/* After dispatch: the status the call ended with, the handler's or the
 * layer's, recorded even when the client was gone by then (false: not
 * dispatched yet). Dispatch counts no metrics: it serves no client. */
bool td_net_fake_call_status(const td_net_call *c, td_net_status *st);
/* The messages sent (td_net_call_send, or the one of td_net_call_reply),
 * packed as on the wire, in order. */
size_t td_net_fake_call_messages(const td_net_call *c);
const uint8_t *td_net_fake_call_message(const td_net_call *c, size_t i, size_t *len);
/* NULL when the handler kept the layer's rules; otherwise the first rule it
 * broke: answering twice, sending after its status, a unary call ending OK
 * without exactly one message, returning without any status while the
 * client was still there (the layer then answers INTERNAL). */
const char *td_net_fake_call_misuse(const td_net_call *c);

/* ---- client ---- */

typedef struct td_net_channel td_net_channel;

typedef struct td_net_channel_opts {
    int32_t max_message_bytes;    /* 0 = 16 MiB */
    /* HTTP/2 keepalive pings every keepalive_ms (0 = off), a connection that
     * does not answer within keepalive_timeout_ms is dropped: a hung peer is
     * noticed even with no call in flight. */
    int32_t keepalive_ms;
    int32_t keepalive_timeout_ms;
    /* Reconnect backoff bounds (0 = gRPC's defaults). */
    int32_t min_reconnect_ms, max_reconnect_ms;
    /* NULL: plaintext. Otherwise TLS (with cert_file and key_file: mutual
     * TLS). Read at open; the channel keeps no pointer to it. */
    const td_net_tls *tls;
} td_net_channel_opts;

/* target: "127.0.0.1:7000" or any gRPC target. Connects lazily. opts may be
 * NULL. NULL on out of memory, or when a TLS file cannot be read (err names
 * it). */
td_net_channel *td_net_channel_open(const char *target, const td_net_channel_opts *opts, td_err *err);
void td_net_channel_close(td_net_channel *ch); /* accepts NULL */
const char *td_net_channel_target(const td_net_channel *ch);


/* Unary call. deadline_ms <= 0: no deadline. On OK *response is the
 * unpacked message (free with protobuf_c_message_free_unpacked(resp, NULL));
 * otherwise NULL and st says why (a reply that does not unpack is
 * INTERNAL). Returns st->code. */
int td_net_unary(td_net_channel *ch, const char *path, const ProtobufCMessage *request,
                 const ProtobufCMessageDescriptor *response_type, ProtobufCMessage **response,
                 int64_t deadline_ms, const td_net_metadata *md, size_t n_md, td_net_status *st);

/* Server-streaming call. */
typedef struct td_net_stream td_net_stream;
/* Starts the call (sends the request). NULL only on out of memory; a call
 * that fails later reports it from td_net_stream_next. */
td_net_stream *td_net_stream_open(td_net_channel *ch, const char *path, const ProtobufCMessage *request,
                                  int64_t deadline_ms, const td_net_metadata *md, size_t n_md, td_err *err);
/* Next message: 1 with *msg set (free it as above), 0 at the end of the
 * stream with st = the final status (OK or the error), or 0 with an error
 * status when the reply does not unpack (the call is cancelled). */
int td_net_stream_next(td_net_stream *s, const ProtobufCMessageDescriptor *type, ProtobufCMessage **msg,
                       td_net_status *st);
/* Cancels the call (the server sees CANCELLED); next then ends. */
void td_net_stream_cancel(td_net_stream *s);
void td_net_stream_close(td_net_stream *s); /* cancels if unfinished; accepts NULL */

/* ---- process signals ----
 * gRPC's threads inherit the signal mask: call td_net_signals_block before
 * creating any thread, then td_net_signals_wait in the main thread. */
void td_net_signals_block(void);
/* Blocks until SIGINT or SIGTERM (returns the signal number), or until
 * timeout_ms passed (returns 0; timeout_ms < 0 waits for ever). */
int td_net_signals_wait(int32_t timeout_ms);


/* ---- grpc.health.v1.Health (net_health.c) ----
 * Check answers the status of a service name ("" = the whole server);
 * Watch streams it, one message per change. Statuses are the proto's:
 * 1 SERVING, 2 NOT_SERVING (unknown names: NOT_FOUND for Check,
 * SERVICE_UNKNOWN for Watch). One td_net_health may be added to several
 * servers (the main port and the plaintext health port). */
enum { TD_NET_HEALTH_SERVING = 1, TD_NET_HEALTH_NOT_SERVING = 2 };
typedef struct td_net_health td_net_health;
td_net_health *td_net_health_create(td_err *err);
void td_net_health_destroy(td_net_health *h); /* after the servers it was added to */
int td_net_health_add(td_net_health *h, td_net_server *s, td_err *err);
/* Sets (or creates) a service's status; wakes its watchers. */
void td_net_health_set(td_net_health *h, const char *service, int status);
/* Ends every Watch stream (server shutdown). */
void td_net_health_shutdown(td_net_health *h);
#endif
