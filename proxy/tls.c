/* tls: OpenSSL server contexts and certificate checks. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "config.h"
#include "tls.h"

struct tls_ctx {
	SSL_CTX	*ctx;
};

/* Copy OpenSSL's most recent error reason (or fallback) into err. */
static void
tls_errstr(char *err, size_t errlen, const char *what, const char *path)
{
	unsigned long e = ERR_peek_last_error();
	const char *why = e ? ERR_reason_error_string(e) : NULL;

	snprintf(err, errlen, "%s \"%s\": %s", what, path, why ? why : "unreadable");
	ERR_clear_error();
}

/* Check that cert and key can be read and belong together. */
int
tls_keypair_check(const char *cert, const char *key, char *err, size_t errlen)
{
	SSL_CTX *ctx;
	int rc = -1;
	FILE *f;

	if ((f = fopen(cert, "r")) == NULL) {
		snprintf(err, errlen, "certificate \"%s\": %s", cert, strerror(errno));
		return -1;
	}
	fclose(f);
	if ((f = fopen(key, "r")) == NULL) {
		snprintf(err, errlen, "key \"%s\": %s", key, strerror(errno));
		return -1;
	}
	fclose(f);

	if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL) {
		snprintf(err, errlen, "cannot create TLS context");
		return -1;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
		tls_errstr(err, errlen, "certificate", cert);
	else if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
		tls_errstr(err, errlen, "key", key);
	else if (SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(err, errlen, "key \"%s\" does not match certificate \"%s\"", key, cert);
		ERR_clear_error();
	} else
		rc = 0;
	SSL_CTX_free(ctx);
	return rc;
}

/* Build the server context: first certificate, TLS 1.2+, tickets on, small buffers. */
struct tls_ctx *
tls_ctx_new(const struct config *cf, char *err, size_t errlen)
{
	struct tls_ctx *t;
	SSL_CTX *ctx;

	if (cf->ncerts == 0) {
		snprintf(err, errlen, "no certificate configured");
		return NULL;
	}
	if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL) {
		snprintf(err, errlen, "cannot create TLS context");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/*
	 * Release the read and write buffers of idle connections: an IMAP
	 * session idles for most of its life, and 2 x 17 KiB per session
	 * would dominate memory.
	 */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"imapgate", 8);
	if (SSL_CTX_use_certificate_chain_file(ctx, cf->certs[0].cert) != 1) {
		tls_errstr(err, errlen, "certificate", cf->certs[0].cert);
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, cf->certs[0].key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		tls_errstr(err, errlen, "key", cf->certs[0].key);
		SSL_CTX_free(ctx);
		return NULL;
	}
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		SSL_CTX_free(ctx);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	t->ctx = ctx;
	return t;
}

/* Drop our reference to the context. */
void
tls_ctx_free(struct tls_ctx *t)
{
	if (t == NULL)
		return;
	SSL_CTX_free(t->ctx);
	free(t);
}

/* Expose the SSL_CTX to endpoint. */
void *
tls_ctx_ssl_ctx(struct tls_ctx *t)
{
	return t->ctx;
}
