/* metrics: render counters, gauges and histograms for Prometheus. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

#include "config.h"
#include "connlimit.h"
#include "log.h"
#include "metrics.h"
#include "netaddr.h"
#include "pool.h"
#include "server.h"
#include "state.h"
#include "stats.h"

/* Seconds a scrape connection may stay idle. */
#define METRICS_TIMEOUT_S	10

struct metrics {
	struct gate		*gate;
	struct evhttp		*http;
};

static const char *const metrics_states[STATS_STATES] = {
	"not_authenticated", "authenticated", "selected", "logout",
};

static const char *const metrics_classes[STATS_CMD_CLASSES] = {
	"any", "login", "starttls", "authenticated", "select", "selected", "close",
	"idle", "logout", "compress", "unknown",
};

static const char *const metrics_lookup_types[STATS_LOOKUP_TYPES] = {
	"hash", "static", "http",
};

/* Append s as a Prometheus label value (backslash, quote and newline escaped). */
static void
metrics_label(struct evbuffer *b, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			evbuffer_add_printf(b, "\\%c", *s);
		else if (*s == '\n')
			evbuffer_add(b, "\\n", 2);
		else
			evbuffer_add(b, s, 1);
	}
}

/* HELP and TYPE lines of one metric family. */
static void
metrics_family(struct evbuffer *b, const char *name, const char *type, const char *help)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family with one unlabelled sample. */
static void
metrics_scalar(struct evbuffer *b, const char *name, const char *type, const char *help,
    uint64_t v)
{
	metrics_family(b, name, type, help);
	evbuffer_add_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

/* One sample with one label. */
static void
metrics_sample1(struct evbuffer *b, const char *name, const char *label, const char *value,
    uint64_t v)
{
	evbuffer_add_printf(b, "%s{%s=\"", name, label);
	metrics_label(b, value);
	evbuffer_add_printf(b, "\"} %llu\n", (unsigned long long)v);
}

/* A counter family from a stats_names table, labelled by name. */
static void
metrics_names(struct evbuffer *b, const char *name, const char *label, const char *help,
    const struct stats_names *t)
{
	struct stats_names copy;

	stats_names_copy(&copy, t);
	metrics_family(b, name, "counter", help);
	for (size_t i = 0; i < STATS_MAX_CODES && copy.v[i].name[0] != '\0'; i++)
		metrics_sample1(b, name, label, copy.v[i].name, copy.v[i].count);
	if (copy.other > 0)
		metrics_sample1(b, name, label, "other", copy.other);
}

/* The samples of one histogram (buckets by stats_rtt_bounds_us, sum in us) with one label. */
static void
metrics_histogram(struct evbuffer *b, const char *name, const char *label, const char *value,
    const uint64_t *buckets, const uint64_t *sum_us)
{
	uint64_t cum = 0;

	for (int k = 0; k <= STATS_RTT_BUCKETS; k++) {
		cum += stats_get(&buckets[k]);
		if (k < STATS_RTT_BUCKETS)
			evbuffer_add_printf(b, "%s_bucket{%s=\"%s\",le=\"%g\"} %llu\n", name, label,
			    value, (double)stats_rtt_bounds_us[k] / 1e6, (unsigned long long)cum);
	}
	evbuffer_add_printf(b, "%s_bucket{%s=\"%s\",le=\"+Inf\"} %llu\n", name, label, value,
	    (unsigned long long)cum);
	evbuffer_add_printf(b, "%s_sum{%s=\"%s\"} %.6f\n", name, label, value,
	    (double)stats_get(sum_us) / 1e6);
	evbuffer_add_printf(b, "%s_count{%s=\"%s\"} %llu\n", name, label, value,
	    (unsigned long long)cum);
}

/* One sample with a server label and a result label. */
static void
metrics_sample_result(struct evbuffer *b, const char *name, const char *server,
    const char *result, uint64_t v)
{
	evbuffer_add_printf(b, "%s{server=\"", name);
	metrics_label(b, server);
	evbuffer_add_printf(b, "\",result=\"%s\"} %llu\n", result, (unsigned long long)v);
}

/* Render every metric into b (the /metrics page, and `imapgate ctl stats`). */
void
metrics_render(struct gate *g, struct evbuffer *b)
{
	struct generation *gen = g->gen;
	const struct config *cf = gen->cf;
	struct pool *p = gen->pool;

	metrics_family(b, "imapgate_build_info", "gauge", "Version of the running imapgate.");
	evbuffer_add_printf(b, "imapgate_build_info{version=\"%s\"} 1\n", IMAPGATE_VERSION);
	metrics_family(b, "imapgate_config_generation", "gauge",
	    "Configuration generation in force (1 at start, +1 per successful reload).");
	evbuffer_add_printf(b, "imapgate_config_generation %u\n", gen->id);
	metrics_family(b, "imapgate_workers", "gauge", "Worker threads.");
	evbuffer_add_printf(b, "imapgate_workers %u\n", g->nworkers);

	metrics_family(b, "imapgate_sessions_open", "gauge",
	    "Open sessions by listener and IMAP state.");
	for (size_t i = 0; i < cf->nlisten && i < STATS_MAX_LISTENERS; i++)
		for (int st = 0; st < STATS_STATES; st++) {
			evbuffer_add_printf(b, "imapgate_sessions_open{listener=\"");
			metrics_label(b, cf->listen[i].address);
			evbuffer_add_printf(b, "\",state=\"%s\"} %llu\n", metrics_states[st],
			    (unsigned long long)stats_get(&stats.open[i][st]));
		}
	metrics_scalar(b, "imapgate_sessions_started_total", "counter",
	    "Sessions accepted.", stats_get(&stats.sessions_total));
	metrics_names(b, "imapgate_sessions_ended_total", "reason",
	    "Sessions ended, by end reason.", &stats.ended);

	metrics_scalar(b, "imapgate_client_received_bytes_total", "counter",
	    "Bytes received from clients and relayed.", stats_get(&stats.client_in));
	metrics_scalar(b, "imapgate_client_sent_bytes_total", "counter",
	    "Bytes relayed to clients.", stats_get(&stats.client_out));
	metrics_scalar(b, "imapgate_backend_received_bytes_total", "counter",
	    "Bytes received from backends and relayed.", stats_get(&stats.backend_in));
	metrics_scalar(b, "imapgate_backend_sent_bytes_total", "counter",
	    "Bytes relayed to backends.", stats_get(&stats.backend_out));

	metrics_scalar(b, "imapgate_tls_handshakes_total", "counter",
	    "Client TLS handshakes completed.", stats_get(&stats.tls_handshakes));
	metrics_names(b, "imapgate_tls_handshake_failures_total", "reason",
	    "Client TLS handshakes failed, by reason.", &stats.tls_failures);

	metrics_family(b, "imapgate_backend_up", "gauge", "Backend server health (1 up, 0 down).");
	for (int i = 0; i < pool_size(p); i++)
		metrics_sample1(b, "imapgate_backend_up", "server", pool_name(p, i),
		    (uint64_t)pool_is_up(p, i));
	metrics_family(b, "imapgate_backend_sessions", "gauge", "Sessions on each backend server now.");
	/* Every generation's sessions: servers a reload removed stay while they have some. */
	for (int i = 0; i < pool_size_all(p); i++)
		if (i < pool_size(p) || pool_active(p, i) > 0)
			metrics_sample1(b, "imapgate_backend_sessions", "server", pool_name(p, i),
			    pool_active(p, i));
	metrics_family(b, "imapgate_backend_connects_total", "counter",
	    "Sessions sent to each backend server.");
	for (int i = 0; i < pool_size(p); i++)
		metrics_sample1(b, "imapgate_backend_connects_total", "server", pool_name(p, i),
		    pool_connects(p, i));
	metrics_family(b, "imapgate_backend_admin_state", "gauge",
	    "The operator's state of each backend server (0 enabled, 1 disabled, 2 draining).");
	for (int i = 0; i < pool_size(p); i++)
		metrics_sample1(b, "imapgate_backend_admin_state", "server", pool_name(p, i),
		    (uint64_t)pool_admin(p, i));
	metrics_family(b, "imapgate_backend_failures_total", "counter",
	    "Connect, TLS, greeting and health-check failures of each backend server.");
	for (int i = 0; i < pool_size(p); i++)
		metrics_sample1(b, "imapgate_backend_failures_total", "server", pool_name(p, i),
		    pool_failures(p, i));

	metrics_family(b, "imapgate_guard_events_total", "counter", "Guard events by kind.");
	for (int i = 0; i < STATS_GUARD_MAX; i++)
		metrics_sample1(b, "imapgate_guard_events_total", "kind", stats_guard_name(i),
		    stats_get(&stats.guard[i]));
	metrics_family(b, "imapgate_byes_injected_total", "counter",
	    "BYE responses imapgate sent itself, by reason.");
	for (int i = 0; i < STATS_BYE_MAX; i++)
		metrics_sample1(b, "imapgate_byes_injected_total", "reason", stats_bye_name(i),
		    stats_get(&stats.bye[i]));
	metrics_names(b, "imapgate_responses_rewritten_total", "code",
	    "Backend responses rewritten, by original code or status.", &stats.rewrites);

	metrics_family(b, "imapgate_command_duration_seconds", "histogram",
	    "Time from a command to its tagged response, by command class.");
	for (int c = 0; c < STATS_CMD_CLASSES; c++)
		metrics_histogram(b, "imapgate_command_duration_seconds", "class",
		    metrics_classes[c], stats.rtt[c], &stats.rtt_sum_us[c]);

	metrics_names(b, "imapgate_lookups_total", "result",
	    "Login lookups (route: login), by type and outcome.", &stats.lookups);
	metrics_family(b, "imapgate_lookup_duration_seconds", "histogram",
	    "Time a login lookup took, by type.");
	for (int c = 0; c < STATS_LOOKUP_TYPES; c++)
		metrics_histogram(b, "imapgate_lookup_duration_seconds", "type",
		    metrics_lookup_types[c], stats.lookup_time[c], &stats.lookup_sum_us[c]);
	metrics_scalar(b, "imapgate_lookup_http_reused_total", "counter",
	    "http lookups asked on a kept-alive connection (backend.lookup.keepalive).",
	    stats_get(&stats.lookup_http_reused));
	metrics_names(b, "imapgate_logins_total", "result",
	    "Logins imapgate made for clients (route: login), by result.", &stats.logins);
	metrics_family(b, "imapgate_backend_logins_total", "counter",
	    "Logins imapgate made on each backend server (route: login), by result.");
	for (int i = 0; i < pool_size(p); i++) {
		metrics_sample_result(b, "imapgate_backend_logins_total", pool_name(p, i), "ok",
		    pool_logins(p, i, 1));
		metrics_sample_result(b, "imapgate_backend_logins_total", pool_name(p, i), "failed",
		    pool_logins(p, i, 0));
	}
	metrics_family(b, "imapgate_connections", "gauge",
	    "Client connections counted against limits.max_connections.");
	evbuffer_add_printf(b, "imapgate_connections %u\n", connlimit_total(g->limits));
}

/* GET /metrics. */
static void
metrics_cb(struct evhttp_request *req, void *arg)
{
	struct metrics *m = arg;
	struct evbuffer *b;

	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		evhttp_send_error(req, 405, "Method Not Allowed");
		return;
	}
	if ((b = evbuffer_new()) == NULL) {
		evhttp_send_error(req, 500, "Out of memory");
		return;
	}
	metrics_render(m->gate, b);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
	    "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

/* Anything else: 404. */
static void
metrics_other_cb(struct evhttp_request *req, void *arg)
{
	(void)arg;
	evhttp_send_error(req, 404, "Not Found");
}

/* Start the HTTP listener. */
struct metrics *
metrics_start(struct gate *g)
{
	const struct config *cf = g->gen->cf;
	struct evconnlistener *evl;
	struct metrics *m;

	if (cf->metrics_address == NULL)
		return NULL;
	if ((m = calloc(1, sizeof(*m))) == NULL || (m->http = evhttp_new(g->base)) == NULL) {
		free(m);
		log_error("msg=\"metrics: out of memory\"");
		return NULL;
	}
	m->gate = g;
	evl = evconnlistener_new_bind(g->base, NULL, NULL,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 128,
	    (const struct sockaddr *)&cf->metrics_addr.ss, (int)cf->metrics_addr.len);
	if (evl == NULL || evhttp_bind_listener(m->http, evl) == NULL) {
		log_error("msg=\"metrics: cannot listen\" listen=%s error=\"%s\"",
		    cf->metrics_address, strerror(errno));
		if (evl != NULL)
			evconnlistener_free(evl);
		evhttp_free(m->http);
		free(m);
		return NULL;
	}
	evhttp_set_timeout(m->http, METRICS_TIMEOUT_S);
	log_info("msg=metrics-listening listen=%s", cf->metrics_address);
	evhttp_set_cb(m->http, "/metrics", metrics_cb, m);
	evhttp_set_gencb(m->http, metrics_other_cb, m);
	evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	return m;
}

/* Stop serving. */
void
metrics_stop(struct metrics *m)
{
	if (m == NULL)
		return;
	evhttp_free(m->http);
	free(m);
}
