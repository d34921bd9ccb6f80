/* zip.c — a zip archive of stored (uncompressed) files in memory: what the
 * vLLM engine API's GetTokenizer sends (a gateway unpacks it with any zip
 * reader). No compression, no zip64: each file and the archive stay under
 * 4 GiB, which the callers check through TD_E_ARG.
 *
 * Layout (PKWARE APPNOTE): per file a local header (30 bytes + name) and
 * the bytes; then a central directory entry per file (46 bytes + name);
 * then the end-of-central-directory record (22 bytes).
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

/* CRC-32 (IEEE, reflected, polynomial 0xEDB88320), bit by bit: the archives
 * are a few MB and built once per model, so no table is worth keeping. */
uint32_t td_crc32(uint32_t crc, const void *data, size_t n) {
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static uint8_t *put16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    return p + 2;
}

static uint8_t *put32(uint8_t *p, uint32_t v) {
    p = put16(p, v & 0xFFFFu);
    return put16(p, v >> 16);
}

#define DOS_DATE_1980_01_01 0x0021u /* a valid date; the files carry no real time */

/* The fields a local header and a central entry share, from "version needed". */
static uint8_t *common_fields(uint8_t *p, const td_zip_file *f, uint32_t crc) {
    p = put16(p, 10);        /* version needed: 1.0 (stored) */
    p = put16(p, 0x0800);    /* flags: names are UTF-8 */
    p = put16(p, 0);         /* method: stored */
    p = put16(p, 0);         /* time */
    p = put16(p, DOS_DATE_1980_01_01);
    p = put32(p, crc);
    p = put32(p, (uint32_t)f->size); /* compressed size */
    p = put32(p, (uint32_t)f->size); /* uncompressed size */
    p = put16(p, (uint32_t)strlen(f->name));
    return put16(p, 0);      /* extra field length */
}

int td_zip_store(const td_zip_file *files, size_t n, uint8_t **out, size_t *out_len, td_err *err) {
    *out = NULL;
    *out_len = 0;
    if (n > 0xFFFF) return td_err_set(err, TD_E_ARG, "zip: %zu files (at most 65535)", n);
    uint64_t total = 22;
    for (size_t i = 0; i < n; i++) {
        size_t name_len = strlen(files[i].name);
        if (!name_len || name_len > 0xFFFF || files[i].size > 0xFFFFFFFEu || (files[i].size && !files[i].data))
            return td_err_set(err, TD_E_ARG, "zip: file %zu: empty or long name, or no data", i);
        total += 30 + 46 + 2 * (uint64_t)name_len + files[i].size;
    }
    if (total > 0xFFFFFFFEu) return td_err_set(err, TD_E_ARG, "zip: %llu bytes (at most 4 GiB)", (unsigned long long)total);
    uint8_t *buf = malloc((size_t)total);
    uint32_t *crcs = malloc((n ? n : 1) * sizeof *crcs);
    uint32_t *offs = malloc((n ? n : 1) * sizeof *offs);
    if (!buf || !crcs || !offs) {
        free(buf);
        free(crcs);
        free(offs);
        return td_err_set(err, TD_E_NOMEM, "zip: out of memory (%llu bytes)", (unsigned long long)total);
    }
    uint8_t *p = buf;
    for (size_t i = 0; i < n; i++) {
        const td_zip_file *f = &files[i];
        size_t name_len = strlen(f->name);
        crcs[i] = td_crc32(0, f->data, f->size);
        offs[i] = (uint32_t)(p - buf);
        p = put32(p, 0x04034b50u); /* local file header */
        p = common_fields(p, f, crcs[i]);
        memcpy(p, f->name, name_len);
        p += name_len;
        if (f->size) memcpy(p, f->data, f->size);
        p += f->size;
    }
    uint32_t dir_at = (uint32_t)(p - buf);
    for (size_t i = 0; i < n; i++) {
        const td_zip_file *f = &files[i];
        size_t name_len = strlen(f->name);
        p = put32(p, 0x02014b50u); /* central directory entry */
        p = put16(p, 0x031E);      /* made by: Unix, spec 3.0 */
        p = common_fields(p, f, crcs[i]);
        p = put16(p, 0);           /* comment length */
        p = put16(p, 0);           /* disk number */
        p = put16(p, 0);           /* internal attributes */
        p = put32(p, 0100644u << 16); /* external: a regular file, rw-r--r-- */
        p = put32(p, offs[i]);
        memcpy(p, f->name, name_len);
        p += name_len;
    }
    uint32_t dir_len = (uint32_t)(p - buf) - dir_at;
    p = put32(p, 0x06054b50u); /* end of central directory */
    p = put16(p, 0);
    p = put16(p, 0);
    p = put16(p, (uint32_t)n);
    p = put16(p, (uint32_t)n);
    p = put32(p, dir_len);
    p = put32(p, dir_at);
    p = put16(p, 0);           /* comment length */
    free(crcs);
    free(offs);
    *out = buf;
    *out_len = (size_t)(p - buf);
    return TD_OK;
}
