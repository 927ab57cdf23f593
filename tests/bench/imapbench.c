/*
 * imapbench: an IMAP load generator for one host:port (TLS, or plaintext
 * with --plain), one libevent loop, many non-blocking connections.
 *
 * Scenarios (--scenario):
 *   bulk     N sessions LOGIN, SELECT, then UID FETCH <uid> BODY.PEEK[]
 *            in a loop for T seconds; payload (literal bytes) MB/s
 *   ops      N sessions alternating NOOP and UID FETCH <uid> (FLAGS);
 *            round trips/s, p50 and p99 latency in microseconds
 *   connect  C concurrent slots doing connect, TLS handshake, greeting,
 *            LOGIN, LOGOUT, close; per second (--resume reuses the last
 *            TLS session / ticket)
 *   session  like connect with a SELECT between LOGIN and LOGOUT: what a
 *            short-lived client (a phone checking mail) costs; per second
 *   idle     K sessions LOGIN, SELECT, IDLE; once all idle, the resident
 *            memory growth of the watched processes per session
 *   (--compress: COMPRESS DEFLATE after LOGIN in bulk, ops, idle; RFC
 *   4978 raw deflate both ways through a libevent filter; the result line
 *   gains wire_in, the compressed bytes read in the measured window)
 *   soak     K session slots, started evenly over the first 15% of T; each
 *            connects, LOGINs, runs 3..25 operations picked at random
 *            (SELECT/EXAMINE, NOOP, FETCH n (FLAGS UID), [UID] FETCH
 *            BODY.PEEK[], IDLE held 0.2-2 s then DONE) with a random think
 *            time between them, LOGOUTs and reconnects, until T.  Every
 *            tagged reply must be OK; NO, BAD, BYE, a close or a 30 s
 *            silence is an error (the first ten are printed as "error:"
 *            lines when they happen).  The watched
 *            processes are sampled every second ("sample ..." lines every
 *            --interval seconds); the result line has the mean RSS of the
 *            middle and last thirds of the run.  --seed makes each slot's
 *            choices reproducible.
 *
 * Watched processes (--pid PID, repeatable; --pid-cmd NAME = every process
 * whose /proc/PID/comm is NAME, rescanned at each sample) give proxy CPU
 * seconds over the measured window and, for idle, VmRSS before and after.
 *
 * Output: one line of key=value pairs per run on stdout, e.g.
 *   scenario=bulk target=imapgate conns=8 seconds=10.00 mbps=912.3 ...
 * client_cpu is this process's CPU seconds per wall second (1.00 = one
 * core busy: the client itself is then the bottleneck).
 * Exit status: 0 if errors=0, 1 if any error, 2 on bad usage.
 *
 * This is a benchmark tool, not a test: it does not verify certificates.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <zlib.h>

#define BENCH_MAX_CONNS		100000	/* --conns / --sessions upper bound */
#define BENCH_MAX_SECONDS	3600	/* --seconds upper bound */
#define BENCH_MAX_PIDS		256	/* watched processes */
#define BENCH_MAX_LINE		65536	/* longest response line accepted */
#define BENCH_MAX_LITERAL	(1ULL << 31)	/* largest literal accepted */
#define BENCH_HIST_US		250000	/* latency histogram range, 1 us bins */
#define BENCH_SETTLE_MS		1000	/* idle: wait before sampling RSS */
#define BENCH_FD_SPARE		64	/* descriptors beyond the sessions */
#define BENCH_CMD_MAX		256	/* longest command we send */
#define BENCH_SAMPLE_MS		1000	/* soak: sampling period */
#define BENCH_SOAK_RAMP		0.15	/* soak: share of T over which slots start */
#define BENCH_SOAK_TICK_MS	10	/* soak: ramp timer period */
#define BENCH_SOAK_OPS_MIN	3	/* soak: operations per login, at least */
#define BENCH_SOAK_OPS_MAX	25	/* soak: operations per login, at most */
#define BENCH_SOAK_THINK_MIN_MS	100	/* soak: think time, unscaled, shortest */
#define BENCH_SOAK_THINK_MAX_MS	1000	/* soak: think time, unscaled, longest */
#define BENCH_SOAK_IDLE_MIN_MS	200	/* soak: IDLE held at least */
#define BENCH_SOAK_IDLE_MAX_MS	2000	/* soak: IDLE held at most */
#define BENCH_SOAK_FULL_RATE	1000	/* soak: slots run at the unscaled think time */
#define BENCH_SOAK_IO_MS	30000	/* soak: limit for a connect or one reply */
#define BENCH_SOAK_RETRY_MS	500	/* soak: pause before a failed slot reconnects */
#define BENCH_SOAK_ERRTEXTS	10	/* soak: error texts printed, at most */
#define BENCH_SOAK_ERRLEN	200	/* soak: longest error text printed */
#define BENCH_SOAK_QUOTE	100	/* soak: bytes of a server line quoted in errors */

enum bench_scenario {
	BENCH_BULK,
	BENCH_OPS,
	BENCH_CONNECT,
	BENCH_IDLE,
	BENCH_SOAK,
};

enum bench_state {
	ST_GREETING,
	ST_LOGIN,
	ST_COMPRESS,
	ST_SELECT,
	ST_RUN,
	ST_IDLE_WAIT,
	ST_IDLING,
	ST_LOGOUT,
	ST_CLOSED,	/* soak: slot between two connections */
	ST_CMD,		/* soak: an operation awaits its tagged reply */
	ST_THINK,	/* soak: pausing between operations */
};

struct bench;

struct conn {
	struct bench		*b;
	LIST_ENTRY(conn)	 link;
	struct bufferevent	*bev;
	enum bench_state	 state;
	unsigned		 tagn;
	char			 tag[16];
	uint64_t		 skip;		/* literal bytes still to drain */
	uint64_t		 sent_ns;	/* when the pending command went out */
	unsigned		 uid;		/* next UID to fetch */
	bool			 noop_next;	/* ops: alternate NOOP / FETCH */
	bool			 zswitch;	/* COMPRESS answered OK: wrap bev next */
	z_stream		*zin, *zout;	/* --compress, once active */

	/* soak: a slot outlives its connections (bev is NULL between them) */
	unsigned		 slot;
	uint64_t		 rng;		/* xorshift64* state */
	struct event		*timer;		/* deadline, think time, IDLE hold */
	unsigned		 ops_left;	/* operations before LOGOUT */
	bool			 selected;
	const char		*op;		/* pending operation, for errors */
};

/* One soak sample of the watched processes. */
struct bench_sample {
	double			 t;		/* seconds since the start */
	long			 rss;		/* KiB */
	double			 pcpu;		/* CPU seconds since the start */
};

struct bench {
	struct event_base	*base;
	SSL_CTX			*ctx;
	SSL_SESSION		*session;	/* --resume: latest ticket */
	LIST_HEAD(, conn)	 open;		/* every open session */
	struct sockaddr_storage	 addr;
	socklen_t		 addrlen;

	/* options */
	enum bench_scenario	 scenario;
	const char		*target;
	const char		*user;
	const char		*pass;
	const char		*mailbox;
	unsigned		 conns;		/* N, C or K */
	unsigned		 concurrency;	/* idle: sessions set up at once */
	double			 seconds;
	double			 setup_timeout;
	unsigned		 uid_min, uid_max;
	bool			 plain;
	bool			 resume;
	bool			 select;	/* session: SELECT before LOGOUT */
	bool			 compress;	/* COMPRESS DEFLATE after LOGIN */
	int			 tls_max;	/* highest TLS version offered; 0: library's */
	char			 tls_seen[16];	/* version the first finished session used */
	int			 zlevel;	/* our deflate level */
	unsigned		 settle_ms;	/* idle: wait before the second RSS sample */
	pid_t			 pids[BENCH_MAX_PIDS];
	unsigned		 npids;
	const char		*pid_cmd;
	uint64_t		 seed;		/* soak */
	unsigned		 interval;	/* soak: seconds between sample lines */
	unsigned		 full_rate;	/* soak: think time scales above this */

	/* run state */
	bool			 measuring;
	bool			 done;
	unsigned		 launched;	/* sessions started (connect, idle) */
	unsigned		 live;		/* sessions open */
	unsigned		 inflight;	/* idle: started, not idling yet */
	unsigned		 ready;		/* bulk/ops: sessions selected */
	unsigned		 idling;
	uint64_t		 bytes;
	uint64_t		 wire_in;	/* compressed bytes read (--compress) */
	uint64_t		 ops;
	uint64_t		 handshakes;
	uint64_t		 resumed;
	uint64_t		 errors;
	uint64_t		 t0_ns, t1_ns;
	double			 cpu0, cpu1;	/* our CPU seconds */
	double			 pcpu0, pcpu1;	/* watched processes' CPU seconds */
	long			 rss0, rss1;	/* watched processes' VmRSS, KiB */
	uint32_t		*hist;
	uint64_t		 hist_over;
	struct event		*ev_stop;
	struct event		*ev_setup;
	struct event		*ev_settle;

	/* soak */
	struct conn		*slots;
	unsigned		 think_min_ms, think_max_ms;
	uint64_t		 connects;
	unsigned		 nerrtext;	/* error texts printed */
	struct bench_sample	*samples;
	unsigned		 nsamples;
	unsigned		 live_max;	/* most sessions open at a sample */
	double			 last_cpu;	/* our CPU at the previous sample */
	struct event		*ev_ramp;
	struct event		*ev_sample;
};

static void conn_open(struct bench *);
static void conn_read_cb(struct bufferevent *, void *);
static void conn_event_cb(struct bufferevent *, short, void *);
static void bench_start_measuring(struct bench *);
static bool soak_line(struct conn *, const char *, size_t);
static void soak_event(struct conn *, short);
static void soak_drop(struct conn *, bool);
static void soak_error(struct conn *, const char *, ...)
    __attribute__((format(printf, 2, 3)));

/* Nanoseconds on the monotonic clock. */
static uint64_t
bench_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* CPU seconds (user + system) this process has used so far. */
static double
bench_self_cpu(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	    (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* Fill out with the watched PIDs (explicit ones, then --pid-cmd matches). */
static unsigned
bench_pids(const struct bench *b, pid_t *out)
{
	unsigned n = 0, i;
	DIR *d;
	struct dirent *de;

	for (i = 0; i < b->npids; i++)
		out[n++] = b->pids[i];
	if (b->pid_cmd == NULL || (d = opendir("/proc")) == NULL)
		return n;
	while ((de = readdir(d)) != NULL && n < BENCH_MAX_PIDS) {
		char path[64], comm[64];
		FILE *f;
		char *end;
		long pid = strtol(de->d_name, &end, 10);

		if (*end != '\0' || pid <= 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		if (fgets(comm, sizeof(comm), f) != NULL) {
			comm[strcspn(comm, "\n")] = '\0';
			if (strcmp(comm, b->pid_cmd) == 0)
				out[n++] = (pid_t)pid;
		}
		fclose(f);
	}
	closedir(d);
	return n;
}

/* CPU seconds (utime + stime) used so far by all watched processes. */
static double
bench_proc_cpu(const struct bench *b)
{
	pid_t pids[BENCH_MAX_PIDS];
	unsigned n = bench_pids(b, pids), i;
	double total = 0, hz = (double)sysconf(_SC_CLK_TCK);

	for (i = 0; i < n; i++) {
		char path[64], buf[1024], *p;
		unsigned long long ut, st;
		FILE *f;
		size_t len;

		snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pids[i]);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		len = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[len] = '\0';
		/* comm may contain spaces: fields are counted after its ')'. */
		if ((p = strrchr(buf, ')')) == NULL)
			continue;
		if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
		    &ut, &st) == 2)
			total += (double)(ut + st) / hz;
	}
	return total;
}

/* Sum of VmRSS in KiB over all watched processes. */
static long
bench_proc_rss(const struct bench *b)
{
	pid_t pids[BENCH_MAX_PIDS];
	unsigned n = bench_pids(b, pids), i;
	long total = 0, kib;

	for (i = 0; i < n; i++) {
		char path[64], line[256];
		FILE *f;

		snprintf(path, sizeof(path), "/proc/%ld/status", (long)pids[i]);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		while (fgets(line, sizeof(line), f) != NULL)
			if (sscanf(line, "VmRSS: %ld", &kib) == 1) {
				total += kib;
				break;
			}
		fclose(f);
	}
	return total;
}

/* Latency percentile in microseconds from the histogram (q in 0..1). */
static double
bench_percentile(const struct bench *b, double q)
{
	uint64_t total = b->hist_over, want, acc = 0;
	unsigned i;

	for (i = 0; i < BENCH_HIST_US; i++)
		total += b->hist[i];
	if (total == 0)
		return 0;
	want = (uint64_t)(q * (double)total);
	if (want >= total)
		want = total - 1;
	for (i = 0; i < BENCH_HIST_US; i++) {
		acc += b->hist[i];
		if (acc > want)
			return i;
	}
	return BENCH_HIST_US;
}

/* soak: mean RSS of the samples taken in [from, to) of the run (KiB). */
static long
bench_rss_mean(const struct bench *b, double from, double to)
{
	double sum = 0;
	unsigned i, n = 0;

	for (i = 0; i < b->nsamples; i++)
		if (b->samples[i].t >= from && b->samples[i].t < to) {
			sum += (double)b->samples[i].rss;
			n++;
		}
	return n ? (long)(sum / n + 0.5) : 0;
}

/* Print the result line of the run. */
static void
bench_report(struct bench *b)
{
	static const char *names[] = { "bulk", "ops", "connect", "idle", "soak" };
	double wall = (double)(b->t1_ns - b->t0_ns) / 1e9;
	double ccpu = b->cpu1 - b->cpu0, pcpu = b->pcpu1 - b->pcpu0;
	bool watch = b->npids > 0 || b->pid_cmd != NULL;
	unsigned i;

	if (wall <= 0)
		wall = 1e-9;
	printf("scenario=%s%s target=%s tls=%s conns=%u seconds=%.2f",
	    b->select ? "session" : names[b->scenario], b->resume ? "-resume" : "", b->target,
	    b->plain ? "no" : b->tls_seen[0] != '\0' ? b->tls_seen : "yes", b->conns, wall);
	switch (b->scenario) {
	case BENCH_BULK:
		printf(" bytes=%llu mbps=%.1f", (unsigned long long)b->bytes,
		    (double)b->bytes / 1e6 / wall);
		if (watch)
			printf(" proxy_cpu=%.3f mb_per_proxy_cpu_s=%.1f", pcpu,
			    pcpu > 0 ? (double)b->bytes / 1e6 / pcpu : 0);
		break;
	case BENCH_OPS:
		printf(" ops=%llu ops_per_s=%.0f p50_us=%.0f p99_us=%.0f",
		    (unsigned long long)b->ops, (double)b->ops / wall,
		    bench_percentile(b, 0.50), bench_percentile(b, 0.99));
		if (watch)
			printf(" proxy_cpu=%.3f proxy_us_per_op=%.1f", pcpu,
			    b->ops ? pcpu * 1e6 / (double)b->ops : 0);
		break;
	case BENCH_CONNECT:
		printf(" handshakes=%llu per_s=%.0f resumed=%llu",
		    (unsigned long long)b->handshakes,
		    (double)b->handshakes / wall, (unsigned long long)b->resumed);
		if (watch)
			printf(" proxy_cpu=%.3f proxy_us_per_conn=%.0f", pcpu,
			    b->handshakes ? pcpu * 1e6 / (double)b->handshakes : 0);
		break;
	case BENCH_IDLE:
		printf(" idling=%u rss_before_kib=%ld rss_after_kib=%ld"
		    " kib_per_session=%.2f", b->idling, b->rss0, b->rss1,
		    b->idling ? (double)(b->rss1 - b->rss0) / b->idling : 0);
		break;
	case BENCH_SOAK: {
		long rmax = 0;

		for (i = 0; i < b->nsamples; i++)
			if (b->samples[i].rss > rmax)
				rmax = b->samples[i].rss;
		printf(" seed=%llu think_ms=%u-%u ops=%llu ops_per_s=%.0f connects=%llu"
		    " bytes=%llu samples=%u live_max=%u", (unsigned long long)b->seed,
		    b->think_min_ms, b->think_max_ms, (unsigned long long)b->ops,
		    (double)b->ops / wall, (unsigned long long)b->connects,
		    (unsigned long long)b->bytes, b->nsamples, b->live_max);
		if (watch)
			printf(" rss_mid_kib=%ld rss_last_kib=%ld rss_max_kib=%ld"
			    " proxy_cpu=%.1f proxy_cpu_pct=%.1f",
			    bench_rss_mean(b, wall / 3, 2 * wall / 3),
			    bench_rss_mean(b, 2 * wall / 3, wall + 1), rmax, pcpu,
			    100 * pcpu / wall);
		break;
	}
	}
	if (b->compress)
		printf(" compress=1 wire_in=%llu", (unsigned long long)b->wire_in);
	printf(" client_cpu=%.2f errors=%llu\n", ccpu / wall,
	    (unsigned long long)b->errors);
	fflush(stdout);
}

/* End the run: take the closing samples and leave the loop. */
static void
bench_finish(struct bench *b)
{
	if (b->done)
		return;
	b->done = true;
	if (!b->measuring) {
		/* Setup never completed: report an empty window. */
		b->t0_ns = bench_ns();
		b->cpu0 = bench_self_cpu();
		b->pcpu0 = bench_proc_cpu(b);
	}
	b->measuring = false;
	b->t1_ns = bench_ns();
	b->cpu1 = bench_self_cpu();
	b->pcpu1 = bench_proc_cpu(b);
	event_base_loopbreak(b->base);
}

/* Close a session and, for the cycling scenarios, start its successor. */
static void
conn_close(struct conn *c, bool failed)
{
	struct bench *b = c->b;
	enum bench_state st = c->state;

	if (failed && !b->done)
		b->errors++;
	LIST_REMOVE(c, link);
	bufferevent_free(c->bev);	/* frees the filter's z_streams too */
	free(c);
	b->live--;
	if (b->done)
		return;
	if (b->scenario == BENCH_IDLE && st != ST_IDLING) {
		b->inflight--;
		conn_open(b);
	} else if (b->scenario == BENCH_CONNECT) {
		conn_open(b);
	} else if (b->scenario == BENCH_IDLE || st == ST_RUN) {
		/* A running or idling session died; the run goes on without it. */
		if (b->scenario == BENCH_IDLE)
			b->idling--;
	}
	if (b->live == 0 && b->scenario != BENCH_CONNECT)
		bench_finish(b);
}

/* Send one tagged command (cmd without tag and CRLF). */
static void
conn_send(struct conn *c, const char *cmd)
{
	snprintf(c->tag, sizeof(c->tag), "a%u", ++c->tagn);
	evbuffer_add_printf(bufferevent_get_output(c->bev), "%s %s\r\n", c->tag, cmd);
	c->sent_ns = bench_ns();
}

/* bulk/ops: issue the next command of the loop. */
static void
conn_next(struct conn *c)
{
	struct bench *b = c->b;
	char cmd[BENCH_CMD_MAX];

	if (b->scenario == BENCH_OPS && c->noop_next) {
		conn_send(c, "NOOP");
	} else {
		snprintf(cmd, sizeof(cmd), b->scenario == BENCH_BULK ?
		    "UID FETCH %u BODY.PEEK[]" : "UID FETCH %u (FLAGS)", c->uid);
		conn_send(c, cmd);
		c->uid = c->uid >= b->uid_max ? b->uid_min : c->uid + 1;
	}
	c->noop_next = !c->noop_next;
}

/* A tagged completion for the pending command; false if c was closed. */
static bool
conn_tagged(struct conn *c, bool ok)
{
	struct bench *b = c->b;
	char cmd[BENCH_CMD_MAX];
	uint64_t us;

	switch (c->state) {
	case ST_LOGIN:
		if (!ok) {
			conn_close(c, true);
			return false;
		}
		if (b->scenario == BENCH_CONNECT && !b->select) {
			c->state = ST_LOGOUT;
			conn_send(c, "LOGOUT");
			return true;
		}
		if (b->compress) {
			c->state = ST_COMPRESS;
			conn_send(c, "COMPRESS DEFLATE");
			return true;
		}
		c->state = ST_SELECT;
		snprintf(cmd, sizeof(cmd), "SELECT \"%s\"", b->mailbox);
		conn_send(c, cmd);
		return true;
	case ST_COMPRESS:
		if (!ok) {
			conn_close(c, true);
			return false;
		}
		/* conn_read_cb wraps the connection once this line is consumed. */
		c->zswitch = true;
		return true;
		snprintf(cmd, sizeof(cmd), "SELECT \"%s\"", b->mailbox);
		conn_send(c, cmd);
		return true;
	case ST_SELECT:
		if (!ok) {
			conn_close(c, true);
			return false;
		}
		if (b->scenario == BENCH_IDLE) {
			c->state = ST_IDLE_WAIT;
			conn_send(c, "IDLE");
			return true;
		}
		if (b->scenario == BENCH_CONNECT) {
			c->state = ST_LOGOUT;
			conn_send(c, "LOGOUT");
			return true;
		}
		c->state = ST_RUN;
		if (++b->ready == b->conns)
			bench_start_measuring(b);
		conn_next(c);
		return true;
	case ST_RUN:
		if (!ok && !b->done)
			b->errors++;
		if (b->measuring) {
			b->ops++;
			us = (bench_ns() - c->sent_ns) / 1000;
			if (us < BENCH_HIST_US)
				b->hist[us]++;
			else
				b->hist_over++;
		}
		conn_next(c);
		return true;
	case ST_LOGOUT:
		if (ok && b->measuring) {
			b->handshakes++;
			if (!b->plain && b->tls_seen[0] == '\0')
				snprintf(b->tls_seen, sizeof(b->tls_seen), "%s",
				    SSL_get_version(bufferevent_openssl_get_ssl(c->bev)));
			if (!b->plain && c->zin == NULL &&
			    SSL_session_reused(bufferevent_openssl_get_ssl(c->bev)))
				b->resumed++;
		}
		conn_close(c, !ok);
		return false;
	default:
		/* A tagged reply nobody asked for. */
		conn_close(c, true);
		return false;
	}
}

/* Handle one response line (without CRLF); false if c was closed. */
static bool
conn_line(struct conn *c, const char *line, size_t len)
{
	size_t tl = strlen(c->tag);

	if (c->b->scenario == BENCH_SOAK)
		return soak_line(c, line, len);
	if (c->state == ST_GREETING) {
		if (len >= 4 && memcmp(line, "* OK", 4) == 0) {
			char cmd[BENCH_CMD_MAX];

			c->state = ST_LOGIN;
			/* Not echoed anywhere; never printed. */
			snprintf(cmd, sizeof(cmd), "LOGIN \"%s\" \"%s\"", c->b->user,
			    c->b->pass);
			conn_send(c, cmd);
			return true;
		}
		conn_close(c, true);
		return false;
	}
	if (len > tl && memcmp(line, c->tag, tl) == 0 && line[tl] == ' ')
		return conn_tagged(c, len >= tl + 3 &&
		    strncasecmp(line + tl + 1, "OK", 2) == 0);
	if (line[0] == '+' && c->state == ST_IDLE_WAIT) {
		c->state = ST_IDLING;
		c->b->inflight--;
		c->b->idling++;
		conn_open(c->b);
		if (c->b->idling == c->b->conns)
			bench_start_measuring(c->b);
	}
	return true;
}

/* A protocol failure on c: drop the soak connection, or close the session. */
static void
conn_fail(struct conn *c, const char *why)
{
	if (c->b->scenario == BENCH_SOAK) {
		soak_error(c, "%s during %s", why, c->op);
		soak_drop(c, true);
	} else
		conn_close(c, true);
}

/* --compress: inflate what the server sent (raw deflate, RFC 4978). */
static enum bufferevent_filter_result
conn_zin_filter(struct evbuffer *src, struct evbuffer *dst, ev_ssize_t lim,
    enum bufferevent_flush_mode mode, void *arg)
{
	struct conn *c = arg;
	z_stream *z = c->zin;

	(void)lim;
	(void)mode;
	while (evbuffer_get_length(src) > 0) {
		struct evbuffer_iovec in, out;
		size_t used, made;
		int r;

		if (evbuffer_peek(src, -1, NULL, &in, 1) < 1 ||
		    evbuffer_reserve_space(dst, 65536, &out, 1) < 1)
			return BEV_ERROR;
		z->next_in = in.iov_base;
		z->avail_in = (uInt)in.iov_len;
		z->next_out = out.iov_base;
		z->avail_out = (uInt)out.iov_len;
		r = inflate(z, Z_SYNC_FLUSH);
		used = in.iov_len - z->avail_in;
		made = out.iov_len - z->avail_out;
		out.iov_len = made;
		evbuffer_commit_space(dst, &out, 1);
		evbuffer_drain(src, used);
		if (c->b->measuring)
			c->b->wire_in += used;
		if (r != Z_OK && r != Z_BUF_ERROR)
			return BEV_ERROR;
		if (used == 0 && made == 0)
			break;
	}
	return BEV_OK;
}

/* --compress: deflate our commands, one sync flush per write. */
static enum bufferevent_filter_result
conn_zout_filter(struct evbuffer *src, struct evbuffer *dst, ev_ssize_t lim,
    enum bufferevent_flush_mode mode, void *arg)
{
	struct conn *c = arg;
	z_stream *z = c->zout;

	(void)lim;
	(void)mode;
	do {
		struct evbuffer_iovec in, out;
		size_t used;

		in.iov_base = NULL;
		in.iov_len = 0;
		evbuffer_peek(src, -1, NULL, &in, 1);
		if (evbuffer_reserve_space(dst, 4096, &out, 1) < 1)
			return BEV_ERROR;
		z->next_in = in.iov_base;
		z->avail_in = (uInt)in.iov_len;
		z->next_out = out.iov_base;
		z->avail_out = (uInt)out.iov_len;
		if (deflate(z, Z_SYNC_FLUSH) == Z_STREAM_ERROR)
			return BEV_ERROR;
		used = in.iov_len - z->avail_in;
		out.iov_len -= z->avail_out;
		evbuffer_commit_space(dst, &out, 1);
		evbuffer_drain(src, used);
	} while (evbuffer_get_length(src) > 0 || c->zout->avail_out == 0);
	return BEV_OK;
}

/* --compress: the filter is freed: so are the streams. */
static void
conn_zfree(void *arg)
{
	struct conn *c = arg;

	inflateEnd(c->zin);
	deflateEnd(c->zout);
	free(c->zin);
	free(c->zout);
}

/* --compress: wrap c's bufferevent in the deflate filter; -1 on failure. */
static int
conn_start_deflate(struct conn *c)
{
	struct bufferevent *f;

	if ((c->zin = calloc(1, sizeof(*c->zin))) == NULL ||
	    (c->zout = calloc(1, sizeof(*c->zout))) == NULL)
		return -1;
	if (inflateInit2(c->zin, -15) != Z_OK)
		return -1;
	if (deflateInit2(c->zout, c->b->zlevel, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
		inflateEnd(c->zin);
		return -1;
	}
	f = bufferevent_filter_new(c->bev, conn_zin_filter, conn_zout_filter,
	    BEV_OPT_CLOSE_ON_FREE, conn_zfree, c);
	if (f == NULL) {
		conn_zfree(c);
		c->zin = c->zout = NULL;
		return -1;
	}
	c->bev = f;
	bufferevent_setcb(f, conn_read_cb, NULL, conn_event_cb, c);
	bufferevent_enable(f, EV_READ | EV_WRITE);
	return 0;
}

/* Input: drain literal bytes by count, hand complete lines to conn_line. */
static void
conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct bench *b = c->b;
	struct evbuffer *in = bufferevent_get_input(bev);

	for (;;) {
		size_t have = evbuffer_get_length(in), eol;
		struct evbuffer_ptr p;
		const char *line;

		if (c->skip > 0) {
			size_t n = have < c->skip ? have : (size_t)c->skip;

			if (n == 0)
				return;
			evbuffer_drain(in, n);
			c->skip -= n;
			if (b->measuring)
				b->bytes += n;
			continue;
		}
		p = evbuffer_search_eol(in, NULL, &eol, EVBUFFER_EOL_CRLF_STRICT);
		if (p.pos < 0) {
			if (have > BENCH_MAX_LINE)
				conn_fail(c, "response line too long");
			return;
		}
		if ((size_t)p.pos > BENCH_MAX_LINE) {
			conn_fail(c, "response line too long");
			return;
		}
		line = (const char *)evbuffer_pullup(in, p.pos + (ssize_t)eol);
		/* A line ending in {n} or {n+} announces n literal bytes. */
		if (p.pos >= 3 && line[p.pos - 1] == '}') {
			const char *q = line + p.pos - 2;
			uint64_t n = 0, scale = 1;

			if (*q == '+')
				q--;
			while (q > line && *q >= '0' && *q <= '9' && scale <= BENCH_MAX_LITERAL) {
				n += (uint64_t)(*q - '0') * scale;
				scale *= 10;
				q--;
			}
			if (*q == '{' && n <= BENCH_MAX_LITERAL)
				c->skip = n;
		}
		if (!conn_line(c, line, (size_t)p.pos))
			return;
		evbuffer_drain(in, (size_t)p.pos + eol);
		if (c->zswitch) {
			char cmd[BENCH_CMD_MAX];

			/* Nothing follows the OK until we speak: the rest is compressed. */
			c->zswitch = false;
			if (evbuffer_get_length(in) > 0 || conn_start_deflate(c) != 0) {
				conn_fail(c, "cannot start COMPRESS");
				return;
			}
			c->state = ST_SELECT;
			snprintf(cmd, sizeof(cmd), "SELECT \"%s\"", b->mailbox);
			conn_send(c, cmd);
			return;
		}
	}
}

/* Connected / closed / failed. */
static void
conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED)
		return;
	if (c->b->scenario == BENCH_SOAK)
		soak_event(c, what);
	else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		conn_close(c, true);
}

/* A new, unconnected bufferevent for one session (TLS unless --plain). */
static struct bufferevent *
bench_bev(struct bench *b)
{
	struct bufferevent *bev;
	SSL *ssl;

	if (b->plain)
		return bufferevent_socket_new(b->base, -1, BEV_OPT_CLOSE_ON_FREE);
	if ((ssl = SSL_new(b->ctx)) == NULL)
		return NULL;
	SSL_set_tlsext_host_name(ssl, "localhost");
	if (b->resume && b->session != NULL)
		SSL_set_session(ssl, b->session);
	bev = bufferevent_openssl_socket_new(b->base, -1, ssl,
	    BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL)
		SSL_free(ssl);
	return bev;
}

/* Start connecting bev to the target with TCP_NODELAY; -1 on failure. */
static int
bench_connect(struct bench *b, struct bufferevent *bev)
{
	evutil_socket_t fd;
	int one = 1;

	if (bufferevent_socket_connect(bev, (struct sockaddr *)&b->addr,
	    (int)b->addrlen) != 0)
		return -1;
	/* Every proxy under test sets TCP_NODELAY; so must the client. */
	fd = bufferevent_getfd(bev);
	if (fd >= 0)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return 0;
}

/* Start one more session if the scenario wants one. */
static void
conn_open(struct bench *b)
{
	struct conn *c;

	if (b->done)
		return;
	if (b->scenario == BENCH_IDLE &&
	    (b->launched >= b->conns || b->inflight >= b->concurrency))
		return;
	if ((b->scenario == BENCH_BULK || b->scenario == BENCH_OPS) &&
	    b->launched >= b->conns)
		return;
	if ((c = calloc(1, sizeof(*c))) == NULL) {
		b->errors++;
		return;
	}
	c->b = b;
	c->uid = b->uid_min + b->launched % (b->uid_max - b->uid_min + 1);
	b->launched++;
	if (b->scenario == BENCH_IDLE)
		b->inflight++;
	if ((c->bev = bench_bev(b)) == NULL)
		goto fail;
	b->live++;
	LIST_INSERT_HEAD(&b->open, c, link);
	bufferevent_setcb(c->bev, conn_read_cb, NULL, conn_event_cb, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	if (bench_connect(b, c->bev) != 0)
		conn_close(c, true);
	return;
fail:
	if (b->scenario == BENCH_IDLE)
		b->inflight--;
	free(c);
	b->errors++;
}

/* soak: next number of a slot's xorshift64* generator. */
static uint64_t
soak_rand(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 2685821657736338717ULL;
}

/* soak: a number drawn uniformly from [lo, hi]. */
static unsigned
soak_between(struct conn *c, unsigned lo, unsigned hi)
{
	return lo + (unsigned)(soak_rand(&c->rng) % ((uint64_t)hi - lo + 1));
}

/* soak: count an error of c's slot; print the first few as they happen. */
static void
soak_error(struct conn *c, const char *fmt, ...)
{
	struct bench *b = c->b;
	char text[BENCH_SOAK_ERRLEN];
	va_list ap;

	if (b->done)
		return;
	b->errors++;
	if (b->nerrtext >= BENCH_SOAK_ERRTEXTS)
		return;
	b->nerrtext++;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	printf("error: t=%.1f slot=%u %s\n", (double)(bench_ns() - b->t0_ns) / 1e9,
	    c->slot, text);
	fflush(stdout);
}

/* soak: arm c's single timer to fire in ms milliseconds. */
static void
soak_arm(struct conn *c, unsigned ms)
{
	struct timeval tv;

	tv.tv_sec = ms / 1000;
	tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
	evtimer_add(c->timer, &tv);
}

/* soak: end c's connection (cleanly or not) and reconnect after a pause. */
static void
soak_drop(struct conn *c, bool failed)
{
	struct bench *b = c->b;

	if (c->bev != NULL) {
		bufferevent_free(c->bev);
		c->bev = NULL;
		b->live--;
	}
	c->state = ST_CLOSED;
	evtimer_del(c->timer);
	if (!b->done)
		soak_arm(c, failed ? BENCH_SOAK_RETRY_MS : 0);
}

/* soak: open slot c's next connection; the greeting is due within the limit. */
static void
soak_connect(struct conn *c)
{
	struct bench *b = c->b;

	if (b->done)
		return;
	c->state = ST_GREETING;
	c->op = "connect";
	c->tagn = 0;
	c->tag[0] = '\0';
	c->skip = 0;
	c->selected = false;
	if ((c->bev = bench_bev(b)) == NULL) {
		soak_error(c, "cannot create a connection");
		soak_drop(c, true);
		return;
	}
	b->live++;
	bufferevent_setcb(c->bev, conn_read_cb, NULL, conn_event_cb, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	if (bench_connect(b, c->bev) != 0) {
		soak_error(c, "connect: %s", strerror(errno));
		soak_drop(c, true);
		return;
	}
	soak_arm(c, BENCH_SOAK_IO_MS);
}

/* soak: send c's next operation, picked at random, or LOGOUT when done. */
static void
soak_next(struct conn *c)
{
	struct bench *b = c->b;
	char cmd[BENCH_CMD_MAX];
	unsigned r = soak_between(c, 0, 99);
	unsigned n = soak_between(c, b->uid_min, b->uid_max);

	c->state = ST_CMD;
	if (c->ops_left == 0) {
		c->state = ST_LOGOUT;
		c->op = "LOGOUT";
		conn_send(c, "LOGOUT");
	} else if (r < 30 || !c->selected) {
		if (!c->selected || soak_between(c, 0, 1) == 0) {
			c->op = soak_between(c, 0, 1) ? "SELECT" : "EXAMINE";
			snprintf(cmd, sizeof(cmd), "%s \"%s\"", c->op, b->mailbox);
			conn_send(c, cmd);
			c->selected = true;
		} else {
			c->op = "NOOP";
			conn_send(c, "NOOP");
		}
	} else if (r < 60) {
		c->op = "FETCH FLAGS";
		snprintf(cmd, sizeof(cmd), "FETCH %u (FLAGS UID)", n);
		conn_send(c, cmd);
	} else if (r < 80) {
		c->op = soak_between(c, 0, 1) ? "UID FETCH BODY" : "FETCH BODY";
		snprintf(cmd, sizeof(cmd), "%s %u BODY.PEEK[]",
		    c->op[0] == 'U' ? "UID FETCH" : "FETCH", n);
		conn_send(c, cmd);
	} else {
		c->state = ST_IDLE_WAIT;
		c->op = "IDLE";
		conn_send(c, "IDLE");
	}
	soak_arm(c, BENCH_SOAK_IO_MS);
}

/* soak: c's timer fired: reconnect, end a think time or an IDLE, or time out. */
static void
soak_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	(void)fd;
	(void)what;
	switch (c->state) {
	case ST_CLOSED:
		soak_connect(c);
		break;
	case ST_THINK:
		soak_next(c);
		break;
	case ST_IDLING:
		/* DONE ends the IDLE; its tagged reply carries the IDLE tag. */
		evbuffer_add(bufferevent_get_output(c->bev), "DONE\r\n", 6);
		c->state = ST_CMD;
		c->op = "IDLE DONE";
		soak_arm(c, BENCH_SOAK_IO_MS);
		break;
	default:
		soak_error(c, "no reply to %s within %u ms", c->op, BENCH_SOAK_IO_MS);
		soak_drop(c, true);
		break;
	}
}

/* soak: one response line of c; false if the connection was dropped. */
static bool
soak_line(struct conn *c, const char *line, size_t len)
{
	struct bench *b = c->b;
	size_t tl = strlen(c->tag);
	int q = len < BENCH_SOAK_QUOTE ? (int)len : BENCH_SOAK_QUOTE;
	char cmd[BENCH_CMD_MAX];

	if (c->state == ST_GREETING) {
		if (len < 4 || memcmp(line, "* OK", 4) != 0) {
			soak_error(c, "greeting: %.*s", q, line);
			soak_drop(c, true);
			return false;
		}
		b->connects++;
		c->state = ST_LOGIN;
		c->op = "LOGIN";
		/* Not echoed anywhere; never printed. */
		snprintf(cmd, sizeof(cmd), "LOGIN \"%s\" \"%s\"", b->user, b->pass);
		conn_send(c, cmd);
		soak_arm(c, BENCH_SOAK_IO_MS);
		return true;
	}
	if (tl > 0 && len > tl && memcmp(line, c->tag, tl) == 0 && line[tl] == ' ') {
		if (len < tl + 3 || strncasecmp(line + tl + 1, "OK", 2) != 0) {
			soak_error(c, "%s: %.*s", c->op, q, line);
			soak_drop(c, true);
			return false;
		}
		switch (c->state) {
		case ST_LOGIN:
			c->ops_left = soak_between(c, BENCH_SOAK_OPS_MIN, BENCH_SOAK_OPS_MAX);
			soak_next(c);
			return true;
		case ST_CMD:
			b->ops++;
			c->ops_left--;
			c->state = ST_THINK;
			soak_arm(c, soak_between(c, b->think_min_ms, b->think_max_ms));
			return true;
		case ST_LOGOUT:
			soak_drop(c, false);
			return false;
		default:
			soak_error(c, "tagged reply while waiting for %s: %.*s", c->op, q, line);
			soak_drop(c, true);
			return false;
		}
	}
	if (len >= 5 && strncasecmp(line, "* BYE", 5) == 0 && c->state != ST_LOGOUT) {
		soak_error(c, "%s: %.*s", c->op, q, line);
		soak_drop(c, true);
		return false;
	}
	if (line[0] == '+') {
		if (c->state != ST_IDLE_WAIT) {
			soak_error(c, "%s: unexpected continuation: %.*s", c->op, q, line);
			soak_drop(c, true);
			return false;
		}
		c->state = ST_IDLING;
		soak_arm(c, soak_between(c, BENCH_SOAK_IDLE_MIN_MS, BENCH_SOAK_IDLE_MAX_MS));
	}
	return true;
}

/* soak: the connection of c closed or failed. */
static void
soak_event(struct conn *c, short what)
{
	int err = EVUTIL_SOCKET_ERROR();
	unsigned long e;
	const char *tls = NULL;

	if (what & BEV_EVENT_EOF) {
		soak_error(c, "connection closed during %s", c->op);
	} else if (what & BEV_EVENT_ERROR) {
		/* Socket errors are queued as "SSL errors" without a reason. */
		if (!c->b->plain && (e = bufferevent_get_openssl_error(c->bev)) != 0)
			tls = ERR_reason_error_string(e);
		if (tls != NULL)
			soak_error(c, "TLS error during %s: %s", c->op, tls);
		else if (err != 0)
			soak_error(c, "error during %s: %s", c->op,
			    evutil_socket_error_to_string(err));
		else
			soak_error(c, "connection failed during %s", c->op);
	} else
		return;
	soak_drop(c, true);
}

/* soak: start the slots due by now, spreading them over the ramp period. */
static void
soak_ramp_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bench *b = arg;
	double ramp = b->seconds * BENCH_SOAK_RAMP;
	double el = (double)(bench_ns() - b->t0_ns) / 1e9;
	unsigned due = ramp <= 0 || el >= ramp ? b->conns :
	    (unsigned)((double)b->conns * el / ramp) + 1;

	(void)fd;
	(void)what;
	if (due > b->conns)
		due = b->conns;
	while (b->launched < due && !b->done)
		soak_connect(&b->slots[b->launched++]);
	if (b->launched >= b->conns)
		evtimer_del(b->ev_ramp);
}

/* soak: sample the watched processes; print a line every --interval s. */
static void
soak_sample_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bench *b = arg;
	struct bench_sample *s;
	double cpu = bench_self_cpu();

	(void)fd;
	(void)what;
	if (b->done || b->nsamples >= (unsigned)b->seconds + 2)
		return;
	s = &b->samples[b->nsamples++];
	s->t = (double)(bench_ns() - b->t0_ns) / 1e9;
	s->rss = bench_proc_rss(b);
	s->pcpu = bench_proc_cpu(b) - b->pcpu0;
	if (b->live > b->live_max)
		b->live_max = b->live;
	if (b->nsamples % b->interval == 0) {
		printf("sample t=%.0f rss_kib=%ld cpu_s=%.1f ops=%llu connects=%llu"
		    " errors=%llu live=%u client_cpu=%.2f\n", s->t, s->rss, s->pcpu,
		    (unsigned long long)b->ops, (unsigned long long)b->connects,
		    (unsigned long long)b->errors, b->live,
		    (cpu - b->last_cpu) / (b->interval * BENCH_SAMPLE_MS / 1000.0));
		fflush(stdout);
		b->last_cpu = cpu;
	}
}

/* The measured window of T seconds ended. */
static void
bench_stop_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	bench_finish(arg);
}

/* idle: the sessions settled; take the second RSS sample and finish. */
static void
bench_settle_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bench *b = arg;

	(void)fd;
	(void)what;
	b->rss1 = bench_proc_rss(b);
	bench_finish(b);
}

/* Setup took too long: measure whatever is ready, count the rest as errors. */
static void
bench_setup_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bench *b = arg;

	(void)fd;
	(void)what;
	if (b->measuring || b->done)
		return;
	if (b->scenario == BENCH_IDLE) {
		b->errors += b->conns - b->idling;
		bench_start_measuring(b);
		return;
	}
	b->errors += b->conns - b->ready;
	bench_start_measuring(b);
}

/* All sessions are ready: open the measured window. */
static void
bench_start_measuring(struct bench *b)
{
	struct timeval tv;

	if (b->measuring || b->done)
		return;
	b->measuring = true;
	b->t0_ns = bench_ns();
	b->cpu0 = bench_self_cpu();
	b->pcpu0 = bench_proc_cpu(b);
	if (b->scenario == BENCH_SOAK) {
		b->last_cpu = b->cpu0;
		tv.tv_sec = BENCH_SAMPLE_MS / 1000;
		tv.tv_usec = (BENCH_SAMPLE_MS % 1000) * 1000;
		evtimer_add(b->ev_sample, &tv);
		tv.tv_sec = BENCH_SOAK_TICK_MS / 1000;
		tv.tv_usec = (BENCH_SOAK_TICK_MS % 1000) * 1000;
		evtimer_add(b->ev_ramp, &tv);
	}
	if (b->scenario == BENCH_IDLE) {
		tv.tv_sec = b->settle_ms / 1000;
		tv.tv_usec = (suseconds_t)(b->settle_ms % 1000) * 1000;
		evtimer_add(b->ev_settle, &tv);
		return;
	}
	tv.tv_sec = (time_t)b->seconds;
	tv.tv_usec = (suseconds_t)((b->seconds - (double)tv.tv_sec) * 1e6);
	evtimer_add(b->ev_stop, &tv);
}

/* TLS 1.3 tickets arrive after the handshake: keep the newest one. */
static int
bench_new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	struct bench *b = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));

	if (b->session != NULL)
		SSL_SESSION_free(b->session);
	b->session = sess;
	return 1;
}

/* Raise RLIMIT_NOFILE so that n sessions fit. */
static int
bench_raise_nofile(unsigned n)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)n + BENCH_FD_SPARE;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return -1;
	if (rl.rlim_cur >= want)
		return 0;
	if (rl.rlim_max < want)
		rl.rlim_max = want;	/* works as root */
	rl.rlim_cur = want;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
		getrlimit(RLIMIT_NOFILE, &rl);
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		return rl.rlim_cur >= want ? 0 : -1;
	}
	return 0;
}

/* Print usage to f. */
static void
bench_usage(FILE *f)
{
	fprintf(f,
	    "usage: imapbench --scenario bulk|ops|connect|session|idle|soak [options]"
	    " HOST:PORT\n"
	    "  --conns N         sessions (bulk, ops), concurrent slots (connect,\n"
	    "                    session), idle sessions (idle), session slots\n"
	    "                    (soak); default 8/64/16/16/5000/200\n"
	    "  --seconds T       measured window, whole run for soak (default 10)\n"
	    "  --seed S          soak: seed of the random choices (default 1)\n"
	    "  --interval I      soak: seconds between sample lines (default 10)\n"
	    "  --full-rate F     soak: above F slots the think time grows by\n"
	    "                    N/F, so the command rate stays that of F slots\n"
	    "                    (default 1000)\n"
	    "  --concurrency C   idle: sessions being set up at once (default 200)\n"
	    "  --setup-timeout S seconds allowed for setup (default 60)\n"
	    "  --plain           plaintext IMAP instead of TLS\n"
	    "  --compress        bulk, ops, idle: COMPRESS DEFLATE after LOGIN\n"
	    "  --zlevel L        our deflate level with --compress (default 6)\n"
	    "  --settle S        idle: seconds all idle before the RSS sample\n"
	    "  --resume          connect, session: reuse the TLS session (tickets)\n"
	    "  --tls-max V       offer TLS up to V: 1.2 or 1.3 (default: both)\n"
	    "  --user U --pass P login (default demo/demo; $IMAPBENCH_PASS)\n"
	    "  --mailbox M       mailbox to SELECT (default INBOX)\n"
	    "  --uids A-B        UIDs to fetch, in turn (default 1-1)\n"
	    "  --target NAME     label for the output line\n"
	    "  --pid PID         watch this process (repeatable)\n"
	    "  --pid-cmd NAME    watch every process named NAME\n");
}

/* Parse "host:port" into b->addr. */
static int
bench_resolve(struct bench *b, const char *hp)
{
	char host[256];
	const char *colon = strrchr(hp, ':');
	struct addrinfo hints, *res;
	size_t hl;

	if (colon == NULL || (hl = (size_t)(colon - hp)) == 0 || hl >= sizeof(host))
		return -1;
	memcpy(host, hp, hl);
	host[hl] = '\0';
	if (host[0] == '[' && host[hl - 1] == ']') {
		memmove(host, host + 1, hl - 2);
		host[hl - 2] = '\0';
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, colon + 1, &hints, &res) != 0)
		return -1;
	memcpy(&b->addr, res->ai_addr, res->ai_addrlen);
	b->addrlen = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

/* Parse a whole unsigned number in [lo, hi]; -1 if it is not one. */
static int
bench_number(const char *s, unsigned long lo, unsigned long hi, unsigned *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
		return -1;
	*out = (unsigned)v;
	return 0;
}

/* Parse the command line into b; -1 on a usage error. */
static int
bench_options(struct bench *b, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "scenario", required_argument, NULL, 's' },
		{ "conns", required_argument, NULL, 'n' },
		{ "seconds", required_argument, NULL, 't' },
		{ "concurrency", required_argument, NULL, 'c' },
		{ "setup-timeout", required_argument, NULL, 'S' },
		{ "plain", no_argument, NULL, 'P' },
		{ "compress", no_argument, NULL, 'Z' },
		{ "zlevel", required_argument, NULL, 'L' },
		{ "settle", required_argument, NULL, 'W' },
		{ "resume", no_argument, NULL, 'r' },
		{ "tls-max", required_argument, NULL, 'X' },
		{ "user", required_argument, NULL, 'u' },
		{ "pass", required_argument, NULL, 'p' },
		{ "mailbox", required_argument, NULL, 'm' },
		{ "uids", required_argument, NULL, 'U' },
		{ "target", required_argument, NULL, 'T' },
		{ "pid", required_argument, NULL, 'i' },
		{ "pid-cmd", required_argument, NULL, 'I' },
		{ "seed", required_argument, NULL, 'e' },
		{ "interval", required_argument, NULL, 'v' },
		{ "full-rate", required_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned v, secs;
	char *end;
	int ch;
	bool have_scenario = false, have_conns = false;

	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (ch) {
		case 's':
			have_scenario = true;
			if (strcmp(optarg, "bulk") == 0)
				b->scenario = BENCH_BULK;
			else if (strcmp(optarg, "ops") == 0)
				b->scenario = BENCH_OPS;
			else if (strcmp(optarg, "connect") == 0)
				b->scenario = BENCH_CONNECT;
			else if (strcmp(optarg, "session") == 0) {
				b->scenario = BENCH_CONNECT;
				b->select = true;
			}
			else if (strcmp(optarg, "idle") == 0)
				b->scenario = BENCH_IDLE;
			else if (strcmp(optarg, "soak") == 0)
				b->scenario = BENCH_SOAK;
			else
				return -1;
			break;
		case 'n':
			if (bench_number(optarg, 1, BENCH_MAX_CONNS, &b->conns) != 0)
				return -1;
			have_conns = true;
			break;
		case 't':
			b->seconds = strtod(optarg, &end);
			if (*end != '\0' || !(b->seconds > 0) || b->seconds > BENCH_MAX_SECONDS)
				return -1;
			break;
		case 'c':
			if (bench_number(optarg, 1, BENCH_MAX_CONNS, &b->concurrency) != 0)
				return -1;
			break;
		case 'S':
			if (bench_number(optarg, 1, BENCH_MAX_SECONDS, &secs) != 0)
				return -1;
			b->setup_timeout = secs;
			break;
		case 'P':
			b->plain = true;
			break;
		case 'r':
			b->resume = true;
			break;
		case 'X':
			if (strcmp(optarg, "1.2") == 0)
				b->tls_max = TLS1_2_VERSION;
			else if (strcmp(optarg, "1.3") == 0)
				b->tls_max = TLS1_3_VERSION;
			else
				return -1;
			break;
		case 'Z':
			b->compress = true;
			break;
		case 'W':
			b->settle_ms = (unsigned)(atof(optarg) * 1000);
			if (b->settle_ms > 600000)
				return -1;
			break;
		case 'L':
			b->zlevel = atoi(optarg);
			if (b->zlevel < 0 || b->zlevel > 9)
				return -1;
			break;
		case 'u':
			b->user = optarg;
			break;
		case 'p':
			b->pass = optarg;
			break;
		case 'm':
			b->mailbox = optarg;
			break;
		case 'U':
			if (sscanf(optarg, "%u-%u", &b->uid_min, &b->uid_max) != 2 ||
			    b->uid_min == 0 || b->uid_max < b->uid_min)
				return -1;
			break;
		case 'T':
			b->target = optarg;
			break;
		case 'i':
			if (b->npids >= BENCH_MAX_PIDS ||
			    bench_number(optarg, 1, INT_MAX, &v) != 0)
				return -1;
			b->pids[b->npids++] = (pid_t)v;
			break;
		case 'I':
			b->pid_cmd = optarg;
			break;
		case 'e':
			errno = 0;
			b->seed = strtoull(optarg, &end, 10);
			if (errno != 0 || end == optarg || *end != '\0')
				return -1;
			break;
		case 'v':
			if (bench_number(optarg, 1, BENCH_MAX_SECONDS, &b->interval) != 0)
				return -1;
			break;
		case 'f':
			if (bench_number(optarg, 1, BENCH_MAX_CONNS, &b->full_rate) != 0)
				return -1;
			break;
		case 'h':
			bench_usage(stdout);
			exit(0);
		default:
			return -1;
		}
	}
	if (!have_scenario || optind != argc - 1 || bench_resolve(b, argv[optind]) != 0)
		return -1;
	if (!have_conns) {
		static const unsigned def[] = { 8, 64, 16, 5000, 200 };

		b->conns = def[b->scenario];
	}
	/* Quotes would end the quoted LOGIN arguments early. */
	if (strpbrk(b->user, "\"\\\r\n") != NULL || strpbrk(b->pass, "\"\\\r\n") != NULL ||
	    strpbrk(b->mailbox, "\"\\\r\n") != NULL ||
	    strlen(b->user) + strlen(b->pass) > BENCH_CMD_MAX / 2 ||
	    strlen(b->mailbox) > BENCH_CMD_MAX / 2)
		return -1;
	return 0;
}

/* soak: allocate the slots and samples, scale and announce the think time. */
static int
soak_setup(struct bench *b)
{
	double scale = b->conns > b->full_rate ? (double)b->conns / b->full_rate : 1;
	unsigned i;

	b->slots = calloc(b->conns, sizeof(*b->slots));
	b->samples = calloc((size_t)b->seconds + 2, sizeof(*b->samples));
	b->ev_ramp = event_new(b->base, -1, EV_PERSIST, soak_ramp_cb, b);
	b->ev_sample = event_new(b->base, -1, EV_PERSIST, soak_sample_cb, b);
	if (b->slots == NULL || b->samples == NULL || b->ev_ramp == NULL ||
	    b->ev_sample == NULL)
		return -1;
	b->think_min_ms = (unsigned)(BENCH_SOAK_THINK_MIN_MS * scale);
	b->think_max_ms = (unsigned)(BENCH_SOAK_THINK_MAX_MS * scale);
	for (i = 0; i < b->conns; i++) {
		struct conn *c = &b->slots[i];
		/* splitmix64 of (seed, slot): distinct, never-zero states. */
		uint64_t z = b->seed * 0x9E3779B97F4A7C15ULL + i + 1;

		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
		z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
		c->rng = (z ^ (z >> 31)) | 1;
		c->b = b;
		c->slot = i;
		c->state = ST_CLOSED;
		c->op = "start";
		if ((c->timer = evtimer_new(b->base, soak_timer_cb, c)) == NULL)
			return -1;
	}
	printf("soak conns=%u seconds=%.0f ramp_s=%.1f ops_per_login=%u-%u"
	    " think_ms=%u-%u think_scale=%.2f full_rate=%u idle_ms=%u-%u seed=%llu\n",
	    b->conns, b->seconds, b->seconds * BENCH_SOAK_RAMP, BENCH_SOAK_OPS_MIN,
	    BENCH_SOAK_OPS_MAX, b->think_min_ms, b->think_max_ms, scale,
	    b->full_rate, BENCH_SOAK_IDLE_MIN_MS, BENCH_SOAK_IDLE_MAX_MS,
	    (unsigned long long)b->seed);
	fflush(stdout);
	return 0;
}

/* soak: free the slots and what goes with them. */
static void
soak_cleanup(struct bench *b)
{
	unsigned i;

	for (i = 0; b->slots != NULL && i < b->conns; i++) {
		if (b->slots[i].bev != NULL)
			bufferevent_free(b->slots[i].bev);
		if (b->slots[i].timer != NULL)
			event_free(b->slots[i].timer);
	}
	free(b->slots);
	free(b->samples);
	if (b->ev_ramp != NULL)
		event_free(b->ev_ramp);
	if (b->ev_sample != NULL)
		event_free(b->ev_sample);
}

/* Set up, run one scenario, print its line. */
int
main(int argc, char **argv)
{
	struct bench b;
	struct timeval tv;
	const char *envpass = getenv("IMAPBENCH_PASS");
	int rc;

	memset(&b, 0, sizeof(b));
	LIST_INIT(&b.open);
	b.target = "unnamed";
	b.user = "demo";
	b.pass = envpass != NULL ? envpass : "demo";
	b.mailbox = "INBOX";
	b.zlevel = 6;
	b.settle_ms = BENCH_SETTLE_MS;
	b.seconds = 10;
	b.setup_timeout = 60;
	b.concurrency = 200;
	b.uid_min = b.uid_max = 1;
	b.seed = 1;
	b.interval = 10;
	b.full_rate = BENCH_SOAK_FULL_RATE;
	if (bench_options(&b, argc, argv) != 0) {
		bench_usage(stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (bench_raise_nofile(b.conns) != 0)
		fprintf(stderr, "imapbench: cannot raise RLIMIT_NOFILE to %u\n",
		    b.conns + BENCH_FD_SPARE);
	if ((b.hist = calloc(BENCH_HIST_US, sizeof(*b.hist))) == NULL ||
	    (b.base = event_base_new()) == NULL) {
		fprintf(stderr, "imapbench: out of memory\n");
		return 1;
	}
	if (!b.plain) {
		if ((b.ctx = SSL_CTX_new(TLS_client_method())) == NULL) {
			fprintf(stderr, "imapbench: SSL_CTX_new failed\n");
			return 1;
		}
		SSL_CTX_set_verify(b.ctx, SSL_VERIFY_NONE, NULL);
		if (b.tls_max != 0)
			SSL_CTX_set_max_proto_version(b.ctx, b.tls_max);
		SSL_CTX_set_app_data(b.ctx, &b);
		if (b.resume) {
			SSL_CTX_set_session_cache_mode(b.ctx, SSL_SESS_CACHE_CLIENT |
			    SSL_SESS_CACHE_NO_INTERNAL_STORE);
			SSL_CTX_sess_set_new_cb(b.ctx, bench_new_session_cb);
		}
	}
	b.ev_stop = evtimer_new(b.base, bench_stop_cb, &b);
	b.ev_setup = evtimer_new(b.base, bench_setup_cb, &b);
	b.ev_settle = evtimer_new(b.base, bench_settle_cb, &b);
	if (b.scenario == BENCH_IDLE)
		b.rss0 = bench_proc_rss(&b);
	if (b.scenario == BENCH_SOAK && soak_setup(&b) != 0) {
		fprintf(stderr, "imapbench: out of memory\n");
		return 1;
	}
	tv.tv_sec = (time_t)b.setup_timeout;
	tv.tv_usec = 0;
	if (b.scenario != BENCH_SOAK)
		evtimer_add(b.ev_setup, &tv);
	if (b.scenario == BENCH_SOAK) {
		/* The ramp timer opens the slots; the stop timer ends the run. */
		bench_start_measuring(&b);
	} else if (b.scenario == BENCH_CONNECT) {
		unsigned i;

		bench_start_measuring(&b);
		for (i = 0; i < b.conns; i++)
			conn_open(&b);
	} else if (b.scenario == BENCH_IDLE) {
		unsigned i;

		for (i = 0; i < b.concurrency && i < b.conns; i++)
			conn_open(&b);
	} else {
		unsigned i;

		for (i = 0; i < b.conns; i++)
			conn_open(&b);
	}
	event_base_dispatch(b.base);
	bench_finish(&b);
	bench_report(&b);
	rc = b.errors == 0 ? 0 : 1;

	/* Close every session still open, then free the rest. */
	b.done = true;
	soak_cleanup(&b);
	while (!LIST_EMPTY(&b.open))
		conn_close(LIST_FIRST(&b.open), false);
	event_free(b.ev_stop);
	event_free(b.ev_setup);
	event_free(b.ev_settle);
	event_base_free(b.base);
	if (b.session != NULL)
		SSL_SESSION_free(b.session);
	if (b.ctx != NULL)
		SSL_CTX_free(b.ctx);
	free(b.hist);
	return rc;
}
