/* coord_api.c — the small handlers of tandem.v1.Inference (Tokenize,
 * ListModels), the method table, request ids and UTF-8 checks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator.h"
#include "tandem/v1/inference.pb-c.h"

#define SVC "/tandem.v1.Inference/"

bool td_coord_utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (len == 0 || i + len > n) return false;
        uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        /* shortest form only, no surrogates, at most U+10FFFF */
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

void td_coord_request_id(const char *given, char out[40]) {
    size_t n = 0;
    /* a caller's id, kept to characters that cannot forge log fields */
    for (const char *p = given; p && *p && n < 39; p++)
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
            *p == '_' || *p == '.')
            out[n++] = *p;
    out[n] = 0;
    if (n) return;
    snprintf(out, 40, "%016llx", (unsigned long long)td_coord_random_seed());
}

static void on_tokenize(td_net_call *call, const ProtobufCMessage *msg, void *user) {
    td_coord *c = user;
    const Tandem__V1__TokenizeRequest *q = (const Tandem__V1__TokenizeRequest *)msg;
    size_t len = strlen(q->text);
    if (!td_coord_utf8_valid(q->text, len)) {
        td_net_call_fail(call, TD_NET_INVALID_ARGUMENT, "text: not valid UTF-8");
        return;
    }
    td_err err = {0};
    const td_coord_model *m = td_coord_model_for(c, q->model, td_net_call_deadline_ms(call), NULL, &err);
    if (!m) {
        td_net_call_fail(call, td_coord_grpc_code(err.code), "%s", err.msg);
        return;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (td_tok_encode(m->tok, q->text, len, q->add_bos, q->parse_special, &ids, &n, &err)) {
        td_net_call_fail(call, TD_NET_INVALID_ARGUMENT, "text: %s", err.msg);
        return;
    }
    char **pieces = calloc(n ? n : 1, sizeof *pieces);
    bool ok = pieces != NULL;
    for (size_t i = 0; i < n && ok; i++) {
        char buf[256];
        int k = td_tok_piece(m->tok, ids[i], true, buf, sizeof buf);
        if (k < 0) k = 0;
        if ((size_t)k >= sizeof buf) k = sizeof buf - 1;
        buf[k] = 0;
        ok = (pieces[i] = strdup(buf)) != NULL;
    }
    if (ok) {
        Tandem__V1__TokenizeResponse r = TANDEM__V1__TOKENIZE_RESPONSE__INIT;
        r.n_ids = n;
        r.ids = ids;
        r.n_pieces = n;
        r.pieces = pieces;
        td_net_call_reply(call, &r.base);
    } else
        td_net_call_fail(call, TD_NET_RESOURCE_EXHAUSTED, "out of memory");
    if (pieces)
        for (size_t i = 0; i < n; i++) free(pieces[i]);
    free(pieces);
    free(ids);
}

static void on_list_models(td_net_call *call, const ProtobufCMessage *msg, void *user) {
    (void)msg;
    td_coord *c = user;
    enum { MAXW = 64 };
    td_coord_worker ws[MAXW];
    int32_t n = td_coord_members_snapshot(c->members, ws, MAXW);
    Tandem__V1__ModelInfo infos[MAXW];
    Tandem__V1__ModelInfo *ptrs[MAXW];
    size_t n_models = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < n_models && strcmp(infos[j].id, ws[i].model_id)) j++;
        if (j == n_models) {
            tandem__v1__model_info__init(&infos[j]);
            infos[j].id = ws[i].model_id;
            infos[j].name = ws[i].model_name;
            infos[j].context_length = ws[i].ctx;
            infos[j].fingerprint = ws[i].fingerprint;
            ptrs[j] = &infos[j];
            n_models++;
        }
        if (!strcmp(ws[i].role, "verifier")) infos[j].verifiers++;
        else infos[j].drafters++;
    }
    Tandem__V1__ListModelsResponse r = TANDEM__V1__LIST_MODELS_RESPONSE__INIT;
    r.n_models = n_models;
    r.models = ptrs;
    td_net_call_reply(call, &r.base);
}

int td_coord_api_register(td_net_server *srv, td_coord *c, td_err *err) {
    int rc;
    if ((rc = td_net_server_add(srv, SVC "Generate", &tandem__v1__generate_request__descriptor, true, td_coord_generate, c, err)) ||
        (rc = td_net_server_add(srv, SVC "Score", &tandem__v1__score_request__descriptor, false, td_coord_score, c, err)) ||
        (rc = td_net_server_add(srv, SVC "Tokenize", &tandem__v1__tokenize_request__descriptor, false, on_tokenize, c, err)) ||
        (rc = td_net_server_add(srv, SVC "ListModels", &tandem__v1__list_models_request__descriptor, false, on_list_models, c, err)))
        return rc;
    return TD_OK;
}
