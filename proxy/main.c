/* main: command line, configuration check, and the daemon's life. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "control.h"
#include "log.h"
#include "server.h"
#include "tls.h"

/* Print the usage line to f. */
static void
usage(FILE *f)
{
	fprintf(f, "usage: imapgate [-t] -c FILE\n       imapgate -V\n"
	    "       imapgate ctl [-S SOCKET] [--json] COMMAND [ARGS...]\n");
}

/* Print every configuration error as FILE:LINE:COL: message. */
static void
print_errors(const char *path, const struct config_errors *errs)
{
	for (size_t i = 0; i < errs->n; i++) {
		const struct config_error *e = &errs->v[i];
		const char *file = e->file ? e->file : path;

		if (e->line > 0)
			fprintf(stderr, "%s:%d:%d: %s\n", file, e->line, e->col, e->msg);
		else
			fprintf(stderr, "%s: %s\n", file, e->msg);
	}
}

int
main(int argc, char *argv[])
{
	struct config_errors errs = { NULL, 0 };
	struct gate gate;
	struct config *cf;
	const char *path = NULL;
	int test = 0, ch, rc;

	if (argc > 1 && strcmp(argv[1], "ctl") == 0)
		return control_client(argc - 1, argv + 1);
	while ((ch = getopt(argc, argv, "c:tVh")) != -1) {
		switch (ch) {
		case 'c':
			path = optarg;
			break;
		case 't':
			test = 1;
			break;
		case 'V':
			printf("imapgate %s\n", IMAPGATE_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (path == NULL || optind != argc) {
		usage(stderr);
		return 2;
	}

	memset(&gate, 0, sizeof(gate));
	gate.path = path;
	if ((cf = config_load(path, &errs)) == NULL) {
		print_errors(path, &errs);
		config_errors_free(&errs);
		return 1;
	}
	if (test) {
		/* Build the TLS contexts too: bad ciphers or keys show up now, not at start. */
		char err[256];
		struct tls_ctx *t = NULL, *b = NULL;
		int bad = 0;

		for (size_t i = 0; i < cf->nlisten; i++)
			if (cf->listen[i].tls != CONFIG_TLS_NONE && t == NULL &&
			    (t = tls_ctx_new(cf, err, sizeof(err))) == NULL) {
				fprintf(stderr, "%s: %s\n", path, err);
				bad = 1;
				break;
			}
		if (cf->backend_tls != CONFIG_TLS_NONE &&
		    (b = tls_ctx_new_backend(cf, err, sizeof(err))) == NULL) {
			fprintf(stderr, "%s: %s\n", path, err);
			bad = 1;
		}
		tls_ctx_free(t);
		tls_ctx_free(b);
		config_free(cf);
		if (bad)
			return 1;
		printf("configuration OK\n");
		return 0;
	}
	log_configure(cf->log_level, cf->log_format, cf->log_output);
	log_info("msg=starting version=%s config=%s pid=%d", IMAPGATE_VERSION,
	    path, (int)getpid());
	/* From here the gate owns cf. */
	rc = server_gate_open(&gate, cf) == 0 && server_gate_run(&gate) == 0 ? 0 : 1;
	server_gate_close(&gate);
	log_info("msg=stopped");
	return rc;
}
