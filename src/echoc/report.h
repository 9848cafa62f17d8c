/* echoc's output: text for people, JSON (iperf3-shaped) and Nagios lines for machines. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "echoc/echoc.h"
#include "echoc/stats.h"

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

/* ---- reports; each returns the final exit status given the mode's status ---- */

int report_stream(const Session *s, const StreamResult *r, int status);

void report_ping_start(const Session *s);
void report_ping_probe(const Session *s, const Probe *p);
int report_ping_end(const Session *s, const PingResult *r, int status);

void report_load_progress(const Session *s, const LoadResult *r, const LoadInterval *last);
int report_load_end(const Session *s, const LoadResult *r, int status);

/* A set-up failure before any mode-specific result (resolution, connect). */
int report_failure(const Session *s, int status);

/* Print an error as "echoc: ..." on stderr. */
void report_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
