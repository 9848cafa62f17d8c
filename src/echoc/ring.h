/* The unverified window: bytes sent to the server and not yet echoed back, kept to compare.
 * Stream offsets only grow: verified <= sent <= filled <= verified + capacity. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ByteRing {
        uint8_t *buf;
        size_t capacity; /* a power of two */
        uint64_t verified; /* echoed and compared */
        uint64_t sent;     /* written to the socket */
        uint64_t filled;   /* taken from the source (stdin, random payload) */
} ByteRing;

/* capacity is rounded up to a power of two. Returns 0 or -ENOMEM. */
int ring_init(ByteRing *r, size_t capacity);
void ring_done(ByteRing *r);

/* Contiguous room at filled (may be less than the total room when it wraps). */
size_t ring_fill_span(const ByteRing *r, uint8_t **ret);
static inline size_t ring_room(const ByteRing *r) {
        return r->capacity - (size_t) (r->filled - r->verified);
}
static inline void ring_filled(ByteRing *r, size_t n) {
        r->filled += n;
}

/* Contiguous filled-but-unsent bytes at sent. */
size_t ring_send_span(const ByteRing *r, const uint8_t **ret);
static inline void ring_sent(ByteRing *r, size_t n) {
        r->sent += n;
}

/* Compare received bytes with the sent-but-unverified ones and advance verified past those
 * that match. Returns how many matched: less than len means a mismatch at stream offset
 * r->verified (if r->verified < r->sent), or bytes the server never got (otherwise). */
size_t ring_verify(ByteRing *r, const uint8_t *data, size_t len);

/* The byte that was sent at stream offset off (verified <= off < sent). */
uint8_t ring_byte_at(const ByteRing *r, uint64_t off);
