/* net_internal.h — what the files of common/net/ share and nothing else
 * includes (tests and the fuzzer excepted): the protobuf-c <-> byte buffer
 * codec, deadline helpers, and a raw-bytes unary call for tests that must put
 * bytes on the wire that no message type would produce. */
#ifndef TD_NET_INTERNAL_H
#define TD_NET_INTERNAL_H

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/support/time.h>

#include <grpc/grpc_security.h>

#include "net/net.h"

/* A byte buffer holding the packed message; NULL on out of memory. The
 * caller destroys it (grpc_byte_buffer_destroy). */
grpc_byte_buffer *td_net_pack(const ProtobufCMessage *msg);
/* The same for raw bytes (len may be 0). */
grpc_byte_buffer *td_net_pack_bytes(const void *data, size_t len);
/* The message in bb as `type`, or NULL when the bytes do not unpack (or
 * memory ran out). Does not take bb. Free the result with
 * protobuf_c_message_free_unpacked(msg, NULL). */
ProtobufCMessage *td_net_unpack(const ProtobufCMessageDescriptor *type, grpc_byte_buffer *bb);
/* The step td_net_unpack ends with, on contiguous bytes (the fuzzer's entry). */
ProtobufCMessage *td_net_unpack_bytes(const ProtobufCMessageDescriptor *type, const uint8_t *data, size_t len);

/* An absolute deadline ms from now (ms <= 0: none). */
gpr_timespec td_net_deadline_after(int64_t ms);

/* Copies a status-details slice (and the optional error string) into st. */
void td_net_status_set(td_net_status *st, grpc_status_code code, grpc_slice details);

/* td_net_unary with the request given as bytes, sent as they are. */
int td_net_unary_raw(td_net_channel *ch, const char *path, const void *bytes, size_t len,
                     const ProtobufCMessageDescriptor *response_type, ProtobufCMessage **response,
                     int64_t deadline_ms, td_net_status *st);

/* ---- net_fake.c: the record of a fake call (net.h) ---- */

typedef struct td_net_fake td_net_fake;
td_net_fake *td_net_fake_new(const td_net_fake_opts *o, td_err *err);
void td_net_fake_free(td_net_fake *f);
const char *td_net_fake_peer(const td_net_fake *f);
int64_t td_net_fake_deadline_ms(const td_net_fake *f);
/* The client is gone (it left, or the deadline passed). */
bool td_net_fake_gone(const td_net_fake *f);
size_t td_net_fake_md(const td_net_fake *f, const td_net_metadata **md);
/* Notes a broken rule (the first one is kept). */
void td_net_fake_misuse(td_net_fake *f, const char *what);
/* Records a message sent: 0, TD_E_IO when the client is gone (or leaves
 * now: max_sends, or bigger than max_bytes, as gRPC would refuse it),
 * TD_E_NOMEM. */
int td_net_fake_record(td_net_fake *f, const ProtobufCMessage *m, size_t max_bytes);
void td_net_fake_set_status(td_net_fake *f, int code, const char *msg);
bool td_net_fake_get_status(const td_net_fake *f, td_net_status *st);
size_t td_net_fake_count(const td_net_fake *f);
const uint8_t *td_net_fake_msg(const td_net_fake *f, size_t i, size_t *len);
const char *td_net_fake_first_misuse(const td_net_fake *f);

/* ---- net_tls.c ---- */

/* The whole file as a NUL-terminated string (malloc'd); NULL with err
 * naming the file (and `what` it was meant to be) when it cannot be read. */
char *td_net_read_pem(const char *path, const char *what, td_err *err);
/* Wipes then frees (key material must not linger in freed memory). */
void td_net_secret_free(char *s);
/* gRPC credentials for a TLS port / a TLS channel; NULL with err set. The
 * caller releases them. */
grpc_server_credentials *td_net_tls_server_creds(const td_net_tls *tls, td_err *err);
grpc_channel_credentials *td_net_tls_channel_creds(const td_net_tls *tls, td_err *err);
/* Which token an "authorization" metadata value ("Bearer <t>") carries: its
 * index, or -1. Every token is compared, in time that depends on the
 * lengths only, so the time does not tell which one matched. */
int32_t td_net_bearer_match(char *const *tokens, size_t n_tokens, const char *value, size_t len);

#endif
