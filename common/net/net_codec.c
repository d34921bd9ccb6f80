/* net_codec.c — protobuf-c messages to and from gRPC byte buffers, the one
 * place where bytes off the wire meet protobuf_c_message_unpack (the fuzzer
 * calls the same functions). Also gRPC's global init, which gRPC itself
 * reference counts, and the deadline helper. */
#include <string.h>

#include <grpc/slice.h>

#include "net/net_internal.h"

/* gRPC counts grpc_init/grpc_shutdown pairs itself, so tandem keeps no
 * counter of its own: every create takes one reference, every destroy
 * drops it, and the last drop (on a thread of ours, not gRPC's) tears gRPC
 * down synchronously, leaving nothing behind for leak checkers. */
void td_net_init(void) { grpc_init(); }
void td_net_shutdown(void) { grpc_shutdown(); }

grpc_byte_buffer *td_net_pack_bytes(const void *data, size_t len) {
    grpc_slice s = grpc_slice_malloc(len);
    if (len) memcpy(GRPC_SLICE_START_PTR(s), data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s); /* the buffer took its own reference */
    return bb;
}

grpc_byte_buffer *td_net_pack(const ProtobufCMessage *msg) {
    size_t n = protobuf_c_message_get_packed_size(msg);
    grpc_slice s = grpc_slice_malloc(n);
    size_t w = protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    if (w != n) { /* protobuf-c's two passes disagree: a bug, not the wire's fault */
        grpc_slice_unref(s);
        return NULL;
    }
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

ProtobufCMessage *td_net_unpack_bytes(const ProtobufCMessageDescriptor *type, const uint8_t *data, size_t len) {
    /* protobuf-c reads len bytes from data even when len is 0; give it a
     * valid pointer then */
    static const uint8_t empty[1] = {0};
    return protobuf_c_message_unpack(type, NULL, len, len ? data : empty);
}

ProtobufCMessage *td_net_unpack(const ProtobufCMessageDescriptor *type, grpc_byte_buffer *bb) {
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb)) return NULL; /* undecompressable */
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    ProtobufCMessage *m = td_net_unpack_bytes(type, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s));
    grpc_slice_unref(s);
    return m;
}

gpr_timespec td_net_deadline_after(int64_t ms) {
    if (ms <= 0) return gpr_inf_future(GPR_CLOCK_REALTIME);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

void td_net_status_set(td_net_status *st, grpc_status_code code, grpc_slice details) {
    if (!st) return;
    st->code = (int)code;
    size_t n = GRPC_SLICE_LENGTH(details);
    if (n >= sizeof st->msg) n = sizeof st->msg - 1;
    if (n) memcpy(st->msg, GRPC_SLICE_START_PTR(details), n);
    st->msg[n] = '\0';
}
