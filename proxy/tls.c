/* tls: OpenSSL server contexts and certificate checks. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "tls.h"

struct tls_cert;

struct tls_ctx {
	SSL_CTX		*ctx;		/* the default (first certificate), or the client context */
	struct tls_cert	*certs;
	size_t		 ncerts;
	int		 client;	/* a context for connections to the backend */
	int		 verify;
	char		*server_name;
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

/* Most DNS names kept per certificate for SNI matching. */
#define TLS_MAX_NAMES	64

struct tls_cert {
	SSL_CTX	*ctx;
	char	*names[TLS_MAX_NAMES];
	size_t	 nnames;
};

/* Does name match pattern: equal ignoring case, or "*.example.org" for one label? */
int
tls_name_matches(const char *pattern, const char *name)
{
	const char *dot;

	if (strcasecmp(pattern, name) == 0)
		return 1;
	if (pattern[0] != '*' || pattern[1] != '.')
		return 0;
	if ((dot = strchr(name, '.')) == NULL || dot == name)
		return 0;
	return strcasecmp(pattern + 1, dot) == 0;
}

/* Collect the certificate's DNS subjectAltNames, or its CN when it has none. */
static void
tls_cert_names(struct tls_cert *c, X509 *x)
{
	GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	int i, n;

	if (sans != NULL) {
		n = sk_GENERAL_NAME_num(sans);
		for (i = 0; i < n && c->nnames < TLS_MAX_NAMES; i++) {
			const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
			const unsigned char *d;
			int len;

			if (g->type != GEN_DNS)
				continue;
			d = ASN1_STRING_get0_data(g->d.dNSName);
			len = ASN1_STRING_length(g->d.dNSName);
			if (len <= 0 || memchr(d, '\0', (size_t)len) != NULL)
				continue;
			c->names[c->nnames++] = strndup((const char *)d, (size_t)len);
		}
		GENERAL_NAMES_free(sans);
	}
	if (c->nnames == 0) {
		char cn[256];
		if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName,
		    cn, sizeof(cn)) > 0)
			c->names[c->nnames++] = strdup(cn);
	}
}

/* Offer ALPN "imap" when the client asks for it; a client without ALPN is welcome too. */
static int
tls_alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
    const unsigned char *in, unsigned int inlen, void *arg)
{
	static const unsigned char imap[] = { 4, 'i', 'm', 'a', 'p' };
	unsigned char *sel;

	(void)ssl;
	(void)arg;
	if (SSL_select_next_proto(&sel, outlen, imap, sizeof(imap), in, inlen) !=
	    OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

/* SNI: switch the connection to the certificate whose names match. */
static int
tls_sni_cb(SSL *ssl, int *alert, void *arg)
{
	struct tls_ctx *t = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

	(void)alert;
	if (name == NULL)
		return SSL_TLSEXT_ERR_OK;
	for (size_t i = 0; i < t->ncerts; i++)
		for (size_t j = 0; j < t->certs[i].nnames; j++)
			if (tls_name_matches(t->certs[i].names[j], name)) {
				if (i > 0)
					SSL_set_SSL_CTX(ssl, t->certs[i].ctx);
				return SSL_TLSEXT_ERR_OK;
			}
	return SSL_TLSEXT_ERR_OK;	/* unknown name: the default certificate */
}

/* Apply tls.min_version, tls.ciphers and tls.ciphersuites to ctx. */
static int
tls_ctx_policy(SSL_CTX *ctx, const struct config *cf, char *err, size_t errlen)
{
	SSL_CTX_set_min_proto_version(ctx, cf->tls_min_version == 13 ? TLS1_3_VERSION :
	    TLS1_2_VERSION);
	if (cf->tls_ciphers != NULL && SSL_CTX_set_cipher_list(ctx, cf->tls_ciphers) != 1) {
		snprintf(err, errlen, "tls.ciphers: no usable cipher in \"%s\"", cf->tls_ciphers);
		ERR_clear_error();
		return -1;
	}
	if (cf->tls_ciphersuites != NULL &&
	    SSL_CTX_set_ciphersuites(ctx, cf->tls_ciphersuites) != 1) {
		snprintf(err, errlen, "tls.ciphersuites: no usable suite in \"%s\"",
		    cf->tls_ciphersuites);
		ERR_clear_error();
		return -1;
	}
	return 0;
}

/* One server SSL_CTX for certificate c. */
static SSL_CTX *
tls_server_ctx(const struct config *cf, const struct config_cert *cc, char *err,
    size_t errlen)
{
	SSL_CTX *ctx;

	if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL) {
		snprintf(err, errlen, "cannot create TLS context");
		return NULL;
	}
	/*
	 * Release the read and write buffers of idle connections: an IMAP
	 * session idles for most of its life, and 2 x 17 KiB per session
	 * would dominate memory.  A write retried after a direct SSL_write
	 * (endpoint.c) comes from libevent's queue, at another address.
	 */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/*
	 * Many IMAP clients close TCP after LOGOUT without a close_notify;
	 * that is an ordinary end of session, not a TLS error.
	 */
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
	    SSL_OP_IGNORE_UNEXPECTED_EOF);
	SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"imapgate", 8);
	SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_cb, NULL);
	if (tls_ctx_policy(ctx, cf, err, errlen) != 0) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cc->cert) != 1) {
		tls_errstr(err, errlen, "certificate", cc->cert);
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, cc->key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		tls_errstr(err, errlen, "key", cc->key);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

/* Build the server contexts: one per certificate, SNI choosing, the first the default. */
struct tls_ctx *
tls_ctx_new(const struct config *cf, char *err, size_t errlen)
{
	struct tls_ctx *t;

	if (cf->ncerts == 0) {
		snprintf(err, errlen, "no certificate configured");
		return NULL;
	}
	if (cf->ncerts > TLS_MAX_CERTS) {
		snprintf(err, errlen, "more than %d certificates", TLS_MAX_CERTS);
		return NULL;
	}
	if ((t = calloc(1, sizeof(*t))) == NULL ||
	    (t->certs = calloc(cf->ncerts, sizeof(*t->certs))) == NULL) {
		free(t);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < cf->ncerts; i++) {
		X509 *x;

		if ((t->certs[i].ctx = tls_server_ctx(cf, &cf->certs[i], err, errlen)) == NULL) {
			tls_ctx_free(t);
			return NULL;
		}
		t->ncerts++;
		if ((x = SSL_CTX_get0_certificate(t->certs[i].ctx)) != NULL)
			tls_cert_names(&t->certs[i], x);
		SSL_CTX_set_tlsext_servername_callback(t->certs[i].ctx, tls_sni_cb);
		SSL_CTX_set_tlsext_servername_arg(t->certs[i].ctx, t);
	}
	t->ctx = t->certs[0].ctx;
	return t;
}

/* Build the client context for the backend: verification on unless turned off. */
struct tls_ctx *
tls_ctx_new_backend(const struct config *cf, char *err, size_t errlen)
{
	struct tls_ctx *t;
	SSL_CTX *ctx;

	if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL) {
		snprintf(err, errlen, "cannot create TLS context");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
	if (cf->backend_verify) {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
		if ((cf->backend_ca_file != NULL ?
		    SSL_CTX_load_verify_locations(ctx, cf->backend_ca_file, NULL) :
		    SSL_CTX_set_default_verify_paths(ctx)) != 1) {
			tls_errstr(err, errlen, "backend.ca_file",
			    cf->backend_ca_file ? cf->backend_ca_file : "(system default)");
			SSL_CTX_free(ctx);
			return NULL;
		}
	} else
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		SSL_CTX_free(ctx);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	t->ctx = ctx;
	t->client = 1;
	t->verify = cf->backend_verify;
	if (cf->backend_server_name != NULL)
		t->server_name = strdup(cf->backend_server_name);
	return t;
}

/* A new SSL for one connection (client side: SNI and host-name check set). */
void *
tls_ssl_new(struct tls_ctx *t)
{
	SSL *ssl = SSL_new(t->ctx);

	if (ssl == NULL || !t->client)
		return ssl;
	SSL_set_connect_state(ssl);
	if (t->server_name != NULL) {
		SSL_set_tlsext_host_name(ssl, t->server_name);
		if (t->verify)
			SSL_set1_host(ssl, t->server_name);
	}
	return ssl;
}

/* Drop our references to the contexts. */
void
tls_ctx_free(struct tls_ctx *t)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i < t->ncerts; i++) {
		SSL_CTX_free(t->certs[i].ctx);
		for (size_t j = 0; j < t->certs[i].nnames; j++)
			free(t->certs[i].names[j]);
	}
	if (t->ncerts == 0)
		SSL_CTX_free(t->ctx);
	free(t->certs);
	free(t->server_name);
	free(t);
}
