/* The unverified window: a ring of sent bytes awaiting their echo, and the comparison. */
#include "echoc/ring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shared/macro.h"

int ring_init(ByteRing *r, size_t capacity) {
        size_t c = 4096;

        while (c < capacity)
                c <<= 1;
        *r = (ByteRing) { .capacity = c };
        r->buf = malloc(c);
        return r->buf ? 0 : -ENOMEM;
}

void ring_done(ByteRing *r) {
        free(r->buf);
        r->buf = NULL;
}

size_t ring_fill_span(const ByteRing *r, uint8_t **ret) {
        size_t at = (size_t) r->filled & (r->capacity - 1);

        *ret = r->buf + at;
        return MIN(ring_room(r), r->capacity - at);
}

size_t ring_send_span(const ByteRing *r, const uint8_t **ret) {
        size_t at = (size_t) r->sent & (r->capacity - 1);

        *ret = r->buf + at;
        return MIN((size_t) (r->filled - r->sent), r->capacity - at);
}

uint8_t ring_byte_at(const ByteRing *r, uint64_t off) {
        return r->buf[(size_t) off & (r->capacity - 1)];
}

size_t ring_verify(ByteRing *r, const uint8_t *data, size_t len) {
        size_t want = MIN(len, (size_t) (r->sent - r->verified)), done = 0;

        while (done < want) {
                size_t at = (size_t) r->verified & (r->capacity - 1);
                size_t n = MIN(want - done, r->capacity - at);

                if (memcmp(r->buf + at, data + done, n) != 0) {
                        size_t i = 0;
                        while (r->buf[at + i] == data[done + i])
                                i++;
                        r->verified += i;
                        return done + i;
                }
                r->verified += n;
                done += n;
        }
        return done;
}
