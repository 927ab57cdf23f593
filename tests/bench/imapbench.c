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
 *   idle     K sessions LOGIN, SELECT, IDLE; once all idle, the resident
 *            memory growth of the watched processes per session
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

#define BENCH_MAX_CONNS		100000	/* --conns / --sessions upper bound */
#define BENCH_MAX_SECONDS	3600	/* --seconds upper bound */
#define BENCH_MAX_PIDS		256	/* watched processes */
#define BENCH_MAX_LINE		65536	/* longest response line accepted */
#define BENCH_MAX_LITERAL	(1ULL << 31)	/* largest literal accepted */
#define BENCH_HIST_US		250000	/* latency histogram range, 1 us bins */
#define BENCH_SETTLE_MS		1000	/* idle: wait before sampling RSS */
#define BENCH_FD_SPARE		64	/* descriptors beyond the sessions */
#define BENCH_CMD_MAX		256	/* longest command we send */

enum bench_scenario {
	BENCH_BULK,
	BENCH_OPS,
	BENCH_CONNECT,
	BENCH_IDLE,
};

enum bench_state {
	ST_GREETING,
	ST_LOGIN,
	ST_SELECT,
	ST_RUN,
	ST_IDLE_WAIT,
	ST_IDLING,
	ST_LOGOUT,
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
	pid_t			 pids[BENCH_MAX_PIDS];
	unsigned		 npids;
	const char		*pid_cmd;

	/* run state */
	bool			 measuring;
	bool			 done;
	unsigned		 launched;	/* sessions started (connect, idle) */
	unsigned		 live;		/* sessions open */
	unsigned		 inflight;	/* idle: started, not idling yet */
	unsigned		 ready;		/* bulk/ops: sessions selected */
	unsigned		 idling;
	uint64_t		 bytes;
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
};

static void conn_open(struct bench *);
static void bench_start_measuring(struct bench *);

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

/* Print the result line of the run. */
static void
bench_report(struct bench *b)
{
	static const char *names[] = { "bulk", "ops", "connect", "idle" };
	double wall = (double)(b->t1_ns - b->t0_ns) / 1e9;
	double ccpu = b->cpu1 - b->cpu0, pcpu = b->pcpu1 - b->pcpu0;
	bool watch = b->npids > 0 || b->pid_cmd != NULL;

	if (wall <= 0)
		wall = 1e-9;
	printf("scenario=%s%s target=%s tls=%s conns=%u seconds=%.2f",
	    names[b->scenario], b->resume ? "-resume" : "", b->target,
	    b->plain ? "no" : "yes", b->conns, wall);
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
	}
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
	bufferevent_free(c->bev);
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
		if (b->scenario == BENCH_CONNECT) {
			c->state = ST_LOGOUT;
			conn_send(c, "LOGOUT");
			return true;
		}
		c->state = ST_SELECT;
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
			if (!b->plain &&
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
				conn_close(c, true);
			return;
		}
		if ((size_t)p.pos > BENCH_MAX_LINE) {
			conn_close(c, true);
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
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		conn_close(c, true);
}

/* Start one more session if the scenario wants one. */
static void
conn_open(struct bench *b)
{
	struct conn *c;
	SSL *ssl = NULL;
	evutil_socket_t fd;
	int one = 1;

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
	if (b->plain) {
		c->bev = bufferevent_socket_new(b->base, -1, BEV_OPT_CLOSE_ON_FREE);
	} else {
		if ((ssl = SSL_new(b->ctx)) == NULL)
			goto fail;
		SSL_set_tlsext_host_name(ssl, "localhost");
		if (b->resume && b->session != NULL)
			SSL_set_session(ssl, b->session);
		c->bev = bufferevent_openssl_socket_new(b->base, -1, ssl,
		    BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	}
	if (c->bev == NULL)
		goto fail;
	ssl = NULL;
	b->live++;
	LIST_INSERT_HEAD(&b->open, c, link);
	bufferevent_setcb(c->bev, conn_read_cb, NULL, conn_event_cb, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&b->addr,
	    (int)b->addrlen) != 0) {
		conn_close(c, true);
		return;
	}
	/* Every proxy under test sets TCP_NODELAY; so must the client. */
	fd = bufferevent_getfd(c->bev);
	if (fd >= 0)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return;
fail:
	if (ssl != NULL)
		SSL_free(ssl);
	if (b->scenario == BENCH_IDLE)
		b->inflight--;
	free(c);
	b->errors++;
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
	if (b->scenario == BENCH_IDLE) {
		tv.tv_sec = BENCH_SETTLE_MS / 1000;
		tv.tv_usec = (BENCH_SETTLE_MS % 1000) * 1000;
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
	    "usage: imapbench --scenario bulk|ops|connect|idle [options] HOST:PORT\n"
	    "  --conns N         sessions (bulk, ops), concurrent slots (connect),\n"
	    "                    idle sessions (idle); default 8/64/16/5000\n"
	    "  --seconds T       measured window (default 10)\n"
	    "  --concurrency C   idle: sessions being set up at once (default 200)\n"
	    "  --setup-timeout S seconds allowed for setup (default 60)\n"
	    "  --plain           plaintext IMAP instead of TLS\n"
	    "  --resume          connect: reuse the TLS session (tickets)\n"
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
		{ "resume", no_argument, NULL, 'r' },
		{ "user", required_argument, NULL, 'u' },
		{ "pass", required_argument, NULL, 'p' },
		{ "mailbox", required_argument, NULL, 'm' },
		{ "uids", required_argument, NULL, 'U' },
		{ "target", required_argument, NULL, 'T' },
		{ "pid", required_argument, NULL, 'i' },
		{ "pid-cmd", required_argument, NULL, 'I' },
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
			else if (strcmp(optarg, "idle") == 0)
				b->scenario = BENCH_IDLE;
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
		static const unsigned def[] = { 8, 64, 16, 5000 };

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
	b.seconds = 10;
	b.setup_timeout = 60;
	b.concurrency = 200;
	b.uid_min = b.uid_max = 1;
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
	tv.tv_sec = (time_t)b.setup_timeout;
	tv.tv_usec = 0;
	evtimer_add(b.ev_setup, &tv);
	if (b.scenario == BENCH_CONNECT) {
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
