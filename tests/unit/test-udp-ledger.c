/* Unit tests: echoc's UDP probe payload (layout, filler, first differing byte) and the reply
 * ledger (intact, duplicate, reordered, late, corrupted, stray; expiry, settling, loss at the
 * end), with a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <endian.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "echoc/udp.h"

#define SIZE 64
#define MS 1000000u /* ns */
#define T0 (1000 * MS)

static void test_payload_layout(void **state) {
        uint8_t buf[SIZE], again[SIZE];
        uint64_t v;

        udp_payload_fill(buf, SIZE, 0x0102030405060708u, 9, 0x1122334455667788u);
        memcpy(&v, buf, 8);
        assert_true(be64toh(v) == 0x0102030405060708u);
        memcpy(&v, buf + 8, 8);
        assert_true(be64toh(v) == 9);
        memcpy(&v, buf + 16, 8);
        assert_true(be64toh(v) == 0x1122334455667788u);
        /* the filler depends on (session, seq) only, and differs between sequence numbers */
        udp_payload_fill(again, SIZE, 0x0102030405060708u, 9, 7);
        assert_memory_equal(buf + 24, again + 24, SIZE - 24);
        udp_payload_fill(again, SIZE, 0x0102030405060708u, 10, 7);
        assert_memory_not_equal(buf + 24, again + 24, SIZE - 24);
        /* a size that is not a multiple of 8 is cut short, not overrun */
        uint8_t odd[UDP_HEADER_SIZE + 5 + 1];
        odd[sizeof(odd) - 1] = 0xa5;
        udp_payload_fill(odd, sizeof(odd) - 1, 1, 2, 3);
        assert_int_equal(odd[sizeof(odd) - 1], 0xa5);
}

static void test_payload_diff(void **state) {
        static const struct {
                size_t at; /* byte flipped, SIZE: none */
                size_t len;
                size_t want;
        } table[] = {
                { SIZE, SIZE, SIZE },
                { 0, SIZE, 0 },
                { 8, SIZE, 8 },
                { 23, SIZE, 23 },
                { 24, SIZE, 24 },
                { SIZE - 1, SIZE, SIZE - 1 },
                { SIZE, SIZE - 3, SIZE - 3 },
                { SIZE, SIZE + 1, SIZE },
                { 30, 40, 30 },
        };
        for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
                uint8_t buf[SIZE + 1] = { 0 };
                udp_payload_fill(buf, SIZE, 42, 5, 77);
                if (table[i].at < SIZE)
                        buf[table[i].at] ^= 0x10;
                assert_int_equal(udp_payload_diff(buf, table[i].len, SIZE, 42, 5, 77), table[i].want);
        }
}

typedef struct Fixture {
        UdpLedger l;
        uint8_t buf[SIZE + 1];
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        assert_non_null(f);
        assert_int_equal(udp_ledger_init(&f->l, SIZE, 100000 /* 100 ms */, T0), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        udp_ledger_done(&f->l);
        free(f);
        return 0;
}

/* Send n probes at time t (ns), one build each. */
static void send_n(Fixture *f, unsigned n, uint64_t t) {
        for (unsigned i = 0; i < n; i++) {
                uint8_t *bufs[1] = { f->buf };
                udp_ledger_build(&f->l, bufs, 1, t);
                assert_int_equal(udp_ledger_sent(&f->l, 1, t), 0);
        }
}

/* The datagram the server would echo for seq, as sent at t. */
static uint8_t *echo_of(Fixture *f, uint64_t seq, uint64_t t) {
        udp_payload_fill(f->buf, SIZE, f->l.session, seq, t);
        return f->buf;
}

static void test_ledger_classifies(void **state) {
        Fixture *f = *state;
        UdpReply r;

        send_n(f, 5, T0);
        assert_int_equal(f->l.outstanding, 5);

        udp_ledger_reply(&f->l, echo_of(f, 0, T0), SIZE, T0 + 2 * MS, &r);
        assert_int_equal(r.kind, UDP_REPLY_OK);
        assert_true(r.settled && !r.reordered && !r.late);
        assert_true(fabs(r.rtt_ms - 2.0) < 1e-9);

        udp_ledger_reply(&f->l, echo_of(f, 0, T0), SIZE, T0 + 3 * MS, &r);
        assert_int_equal(r.kind, UDP_REPLY_DUPLICATE);

        udp_ledger_reply(&f->l, echo_of(f, 2, T0), SIZE, T0 + 3 * MS, &r);
        assert_int_equal(r.kind, UDP_REPLY_OK);
        udp_ledger_reply(&f->l, echo_of(f, 1, T0), SIZE, T0 + 4 * MS, &r);
        assert_int_equal(r.kind, UDP_REPLY_OK);
        assert_true(r.reordered);

        echo_of(f, 3, T0)[40] ^= 1;
        udp_ledger_reply(&f->l, f->buf, SIZE, T0 + 4 * MS, &r);
        assert_int_equal(r.kind, UDP_REPLY_CORRUPT);
        assert_int_equal(r.mismatch_at, 40);
        assert_true(r.seq_sent && r.settled);

        /* a wrong send time is a corruption too, found against the time recorded */
        udp_ledger_reply(&f->l, echo_of(f, 4, T0 + 1), SIZE, T0 + 4 * MS, &r);
        assert_int_equal(r.kind, UDP_REPLY_CORRUPT);
        assert_int_equal(r.mismatch_at, 23);

        /* a short reply, a sequence number never sent, another session, a runt */
        udp_ledger_reply(&f->l, echo_of(f, 2, T0), SIZE - 1, T0 + 5 * MS, &r);
        assert_int_equal(r.kind, UDP_REPLY_CORRUPT);
        assert_int_equal(r.mismatch_at, SIZE - 1);
        udp_ledger_reply(&f->l, echo_of(f, 99, T0), SIZE, T0 + 5 * MS, &r);
        assert_int_equal(r.kind, UDP_REPLY_CORRUPT);
        assert_false(r.seq_sent);
        echo_of(f, 1, T0)[0] ^= 0xff;
        udp_ledger_reply(&f->l, f->buf, SIZE, T0 + 5 * MS, &r);
        assert_int_equal(r.kind, UDP_REPLY_STRAY);
        udp_ledger_reply(&f->l, echo_of(f, 1, T0), UDP_HEADER_SIZE - 1, T0 + 5 * MS, &r);
        assert_int_equal(r.kind, UDP_REPLY_STRAY);

        udp_ledger_finish(&f->l);
        const UdpStats *st = &f->l.st;
        assert_int_equal(st->sent, 5);
        assert_int_equal(st->received, 3);
        assert_int_equal(st->duplicates, 1);
        assert_int_equal(st->reordered, 1);
        assert_int_equal(st->corrupted, 4);
        assert_int_equal(st->stray, 2);
        assert_int_equal(st->lost, 0); /* 3 and 4 came back, corrupted: not lost */
        assert_int_equal(st->rtt.n, 3);
        assert_int_equal(st->latency.count, 3);
        assert_int_equal(f->l.outstanding, 0);
}

static void test_ledger_expiry_and_late(void **state) {
        Fixture *f = *state;
        UdpReply r;
        uint64_t seq;

        send_n(f, 3, T0);
        send_n(f, 2, T0 + 50 * MS);
        assert_int_equal(udp_ledger_next_expiry(&f->l), T0 + 100 * MS);
        udp_ledger_reply(&f->l, echo_of(f, 1, T0), SIZE, T0 + 1 * MS, &r);
        assert_false(udp_ledger_expire(&f->l, T0 + 99 * MS, &seq));

        /* 0 and 2 time out in order, 1 was answered */
        assert_true(udp_ledger_expire(&f->l, T0 + 100 * MS, &seq));
        assert_int_equal(seq, 0);
        assert_true(udp_ledger_expire(&f->l, T0 + 100 * MS, &seq));
        assert_int_equal(seq, 2);
        assert_false(udp_ledger_expire(&f->l, T0 + 100 * MS, &seq));
        assert_int_equal(f->l.outstanding, 2);
        assert_int_equal(udp_ledger_next_expiry(&f->l), T0 + 150 * MS);

        /* an ICMP error settles the newest outstanding probe */
        assert_true(udp_ledger_newest_outstanding(&f->l, &seq));
        assert_int_equal(seq, 4);
        assert_true(udp_ledger_settle(&f->l, 4));
        assert_false(udp_ledger_settle(&f->l, 4));

        /* 2's reply after its timeout: received, late; its send time checked for plausibility */
        udp_ledger_reply(&f->l, echo_of(f, 2, T0), SIZE, T0 + 120 * MS, &r);
        assert_int_equal(r.kind, UDP_REPLY_OK);
        assert_true(r.late && !r.settled);
        udp_ledger_reply(&f->l, echo_of(f, 0, T0 + 500 * MS), SIZE, T0 + 120 * MS, &r);
        assert_int_equal(r.kind, UDP_REPLY_CORRUPT); /* a send time in the future */

        udp_ledger_finish(&f->l);
        assert_int_equal(f->l.st.received, 2);
        assert_int_equal(f->l.st.late, 1);
        assert_int_equal(f->l.st.lost, 2); /* 3 (never answered) and 4 (refused) */
        assert_int_equal(f->l.outstanding, 1);
}

/* Many probes in flight: the ring of send times and the bitmaps grow, nothing is lost track of. */
static void test_ledger_grows(void **state) {
        Fixture *f = *state;
        UdpReply r;
        const unsigned n = 100000;

        send_n(f, n, T0);
        for (uint64_t s = 0; s < n; s += 2) {
                udp_ledger_reply(&f->l, echo_of(f, s, T0), SIZE, T0 + MS, &r);
                assert_int_equal(r.kind, UDP_REPLY_OK);
                assert_true(r.settled);
        }
        assert_int_equal(f->l.outstanding, n / 2);
        udp_ledger_finish(&f->l);
        assert_int_equal(f->l.st.received, n / 2);
        assert_int_equal(f->l.st.lost, n / 2);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_payload_layout),
                cmocka_unit_test(test_payload_diff),
                cmocka_unit_test_setup_teardown(test_ledger_classifies, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ledger_expiry_and_late, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ledger_grows, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
