/*
 * parser_bench: throughput of the IMAP tokenizer on server-to-client
 * FETCH traffic, fed the way the relay feeds it (16 KiB reads, literal
 * bytes skipped, not fed).
 *
 * Usage: parser_bench [GB] [FILE.s2c]
 *   GB      gigabytes to parse per workload (default 1)
 *   FILE    a recorded server stream to repeat instead of the synthetic
 *           bulk FETCH (its greeting is parsed once per repetition too)
 * Prints MB/s and cycles per byte (CPU MHz from /proc/cpuinfo) for a
 * bulk FETCH with large literals and for small literal-free lines.
 */
#include "imap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BENCH_READ	16384		/* bytes per simulated socket read */
#define BENCH_BODY	(64 * 1024)	/* literal size of a synthetic FETCH */
#define BENCH_MSGS	64		/* responses in one synthetic buffer */

/* Nominal CPU clock in MHz from /proc/cpuinfo, 0 if unknown. */
static double
bench_cpu_mhz(void)
{
	char line[256];
	double mhz = 0;
	FILE *f = fopen("/proc/cpuinfo", "r");

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "cpu MHz : %lf", &mhz) == 1)
			break;
	fclose(f);
	return mhz;
}

/* Seconds on the monotonic clock. */
static double
bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Parse buf (server direction) over and over until total bytes went by. */
static void
bench_run(const char *label, const char *buf, size_t len, uint64_t total, double mhz)
{
	struct imap_parser p;
	struct imap_event ev;
	uint64_t done = 0, lines = 0, lits = 0;
	double t0, dt;
	size_t off, end, c;

	imap_parse_init(&p, IMAP_DIR_SERVER, 0);
	t0 = bench_now();
	while (done < total) {
		for (off = 0; off < len; ) {
			end = off + BENCH_READ < len ? off + BENCH_READ : len;
			while (off < end) {
				uint64_t left = imap_parse_literal_left(&p);

				if (left > 0) {
					c = left < end - off ? (size_t)left : end - off;
					imap_parse_skip(&p, c);
					off += c;
					continue;
				}
				c = imap_parse_feed(&p, buf + off, end - off, &ev);
				off += c;
				if (ev.type == IMAP_EV_LINE)
					lines++;
				else if (ev.type == IMAP_EV_LITERAL_HEAD) {
					lits++;
					if (ev.lit_len == 0)
						imap_parse_skip(&p, 0);
				} else if (ev.type == IMAP_EV_ERROR) {
					fprintf(stderr, "parse error: %s\n", p.error);
					exit(1);
				}
			}
		}
		done += len;
	}
	dt = bench_now() - t0;
	imap_parse_free(&p);
	printf("%-22s %8.1f MB  %8.3f s  %9.1f MB/s", label, (double)done / 1e6, dt,
	    (double)done / 1e6 / dt);
	if (mhz > 0)
		printf("  %7.4f cycles/byte", dt * mhz * 1e6 / (double)done);
	printf("  (%llu responses, %llu literals)\n", (unsigned long long)lines,
	    (unsigned long long)lits);
}

/* Build n synthetic FETCH responses with a body of body bytes each. */
static char *
bench_fetch(size_t n, size_t body, size_t *len)
{
	size_t cap = n * (body + 128), off = 0, i, j;
	char *b = malloc(cap);

	if (b == NULL)
		exit(1);
	for (i = 0; i < n; i++) {
		off += (size_t)snprintf(b + off, cap - off,
		    "* %zu FETCH (UID %zu FLAGS (\\Seen) BODY[] {%zu}\r\n", i + 1, i + 100, body);
		for (j = 0; j < body; j++)
			b[off + j] = (char)(j % 78 == 77 ? '\n' : 'a' + j % 26);
		off += body;
		off += (size_t)snprintf(b + off, cap - off, ")\r\n");
	}
	*len = off;
	return b;
}

/* Build n small literal-free responses (FLAGS updates). */
static char *
bench_small(size_t n, size_t *len)
{
	size_t cap = n * 96, off = 0, i;
	char *b = malloc(cap);

	if (b == NULL)
		exit(1);
	for (i = 0; i < n; i++)
		off += (size_t)snprintf(b + off, cap - off,
		    "* %zu FETCH (UID %zu MODSEQ (12345) FLAGS (\\Seen \\Answered))\r\n", i + 1, i + 7);
	*len = off;
	return b;
}

int
main(int argc, char **argv)
{
	double gb = argc > 1 ? atof(argv[1]) : 1.0, mhz = bench_cpu_mhz();
	uint64_t total = (uint64_t)(gb * 1e9);
	size_t len;
	char *b;

	if (gb <= 0 || gb > 1000) {
		fprintf(stderr, "usage: %s [GB] [FILE.s2c]\n", argv[0]);
		return 2;
	}
	printf("cpu MHz %.0f, %.2f GB per workload, %d-byte reads\n", mhz, gb, BENCH_READ);
	if (argc > 2) {
		FILE *f = fopen(argv[2], "rb");
		long n;

		if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) <= 0) {
			fprintf(stderr, "cannot read %s\n", argv[2]);
			return 1;
		}
		rewind(f);
		b = malloc((size_t)n);
		if (b == NULL || fread(b, 1, (size_t)n, f) != (size_t)n)
			return 1;
		fclose(f);
		bench_run("recorded session", b, (size_t)n, total, mhz);
		free(b);
	}
	b = bench_fetch(BENCH_MSGS, BENCH_BODY, &len);
	bench_run("bulk FETCH 64KiB", b, len, total, mhz);
	free(b);
	b = bench_fetch(BENCH_MSGS * 16, 2048, &len);
	bench_run("FETCH 2KiB bodies", b, len, total, mhz);
	free(b);
	b = bench_small(20000, &len);
	bench_run("small FETCH FLAGS", b, len, total / 4, mhz);
	free(b);
	return 0;
}
