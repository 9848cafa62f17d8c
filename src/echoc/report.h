/* echoc's output: text for people, JSON (iperf3-shaped) and Nagios lines for machines. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "echoc/echoc.h"
#include "echoc/stats.h"
#include "shared/json.h"

/* ---- results the modes hand over ---- */

typedef struct StreamResult {
        uint64_t sent, echoed;
        uint64_t elapsed_usec;
        bool mismatch;
        uint64_t mismatch_offset;
} StreamResult;

typedef enum ProbeStatus {
        PROBE_OK,
        PROBE_CORRUPT,
        PROBE_TIMEOUT,
        PROBE_FAILED, /* connect or I/O error; see error */
} ProbeStatus;

typedef struct Probe {
        uint64_t seq;
        ProbeStatus status;
        int error; /* -errno for PROBE_FAILED */
        size_t bytes;
        double connect_ms, rtt_ms; /* NAN when not measured */
        uint64_t mismatch_offset;  /* within the probe, for PROBE_CORRUPT */
        /* UDP: replies beyond the first, for the record; and what one reply's line says */
        unsigned duplicates;
        bool duplicate, reordered, late;
} Probe;

typedef struct PingResult {
        uint64_t sent, echoed, corrupted, lost;
        uint64_t elapsed_usec;
        RttStats rtt, connect;
        Probe *probes; /* kept for --json only */
        size_t n_probes, n_allocated;
} PingResult;

typedef struct LoadInterval {
        double start, end; /* seconds since the start */
        uint64_t ok, failed, round_trips, bytes;
} LoadInterval;

#define LOAD_ERRNO_MAX 160

typedef struct LoadResult {
        uint64_t ok, refused, failed, timeouts, unfinished;
        uint64_t round_trips, mismatches;
        uint64_t bytes_sent, bytes_echoed;
        uint64_t elapsed_usec;
        uint64_t errors[LOAD_ERRNO_MAX]; /* failures by errno (ENODATA: closed early) */
        Histogram latency;
        LoadInterval *intervals;
        size_t n_intervals, n_allocated;
} LoadResult;

/* UDP ping and load (counted by udp.c's ledger). "received": probes echoed intact at least once;
 * "lost": probes without any reply of theirs by the end; "corrupted", "duplicates", "stray":
 * datagrams. */
typedef struct UdpStats {
        uint64_t sent, received, lost;
        uint64_t duplicates, reordered, corrupted, stray, refused, late;
        RttStats rtt;      /* ms, first intact echoes */
        Histogram latency; /* ns, the same */
} UdpStats;

typedef struct UdpInterval {
        double start, end; /* seconds since the start */
        uint64_t sent, received;
} UdpInterval;

typedef struct UdpResult {
        UdpStats st;
        uint64_t elapsed_usec; /* ping: in all; load: the sending time the rates are over */
        Probe *probes;         /* ping: one per probe, by seq */
        size_t n_probes, n_allocated;
        UdpInterval *intervals; /* load: one per second */
        size_t n_intervals, n_allocated_intervals;
} UdpResult;

/* ---- reports; each returns the final exit status given the mode's status ---- */

int report_stream(const Session *s, const StreamResult *r, int status);

void report_ping_start(const Session *s);
void report_ping_probe(const Session *s, const Probe *p);
int report_ping_end(const Session *s, const PingResult *r, int status);

void report_load_progress(const Session *s, const LoadResult *r, const LoadInterval *last);
int report_load_end(const Session *s, const LoadResult *r, int status);

void report_udp_datagram(const Session *s, size_t len, const char *what);
void report_udp_progress(const Session *s, const UdpResult *r, const UdpInterval *last);
int report_udp_end(const Session *s, const UdpResult *r, int status);

/* A set-up failure before any mode-specific result (resolution, connect). */
int report_failure(const Session *s, int status);

/* ---- building blocks of the writers (report.c, report-udp.c) ---- */

void report_json_start(JsonWriter *j, const Session *s);
void report_json_finish(JsonWriter *j, const Session *s);
void report_json_rtt(JsonWriter *j, const char *key, const RttStats *st, const Histogram *h);
void report_json_probe(JsonWriter *j, const Session *s, const Probe *p);
int report_nagios(const Session *s, const char *text, double rtt_ms, double loss, uint64_t corrupted, int status);
const char *report_target_name(const Session *s, char *buf, size_t size);
double report_percentile_ms(const Histogram *h, double p);

/* Print an error as "echoc: ..." on stderr. */
void report_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
