/* tls: OpenSSL contexts built from the configuration.  The only module besides endpoint that uses SSL_*. */
#ifndef IMAPGATE_TLS_H
#define IMAPGATE_TLS_H

#include <stddef.h>

/* Most certificates tls.certificates may hold; one SSL_CTX each (config.c refuses more). */
#define TLS_MAX_CERTS	64

struct config;
struct tls_ctx;

/*
 * Check that cert and key are readable PEM files and that the key belongs
 * to the certificate.  Returns 0, or -1 with a one-line message in err.
 */
int		 tls_keypair_check(const char *cert, const char *key,
		    char *err, size_t errlen);
/*
 * Build the server-side context for cf's certificates (SNI picks among
 * them, the first is the default); NULL with err on failure.
 */
struct tls_ctx	*tls_ctx_new(const struct config *cf, char *err, size_t errlen);
/* Build the client-side context for TLS to the backend; NULL with err on failure. */
struct tls_ctx	*tls_ctx_new_backend(const struct config *cf, char *err, size_t errlen);
/* Free a context made by tls_ctx_new* (sessions hold their own SSL refs). */
void		 tls_ctx_free(struct tls_ctx *t);
/* A new SSL for one connection: server side, or client side naming the backend. */
void		*tls_ssl_new(struct tls_ctx *t);
/* The certificate's DNS names matched against an SNI name (exact or "*.x"). */
int		 tls_name_matches(const char *pattern, const char *name);

#endif
