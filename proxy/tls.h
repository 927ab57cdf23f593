/* tls: OpenSSL contexts built from the configuration.  The only module besides endpoint that uses SSL_*. */
#ifndef IMAPGATE_TLS_H
#define IMAPGATE_TLS_H

#include <stddef.h>

struct config;
struct tls_ctx;

/*
 * Check that cert and key are readable PEM files and that the key belongs
 * to the certificate.  Returns 0, or -1 with a one-line message in err.
 */
int		 tls_keypair_check(const char *cert, const char *key,
		    char *err, size_t errlen);
/* Build the server-side context for cf's certificates; NULL with err on failure. */
struct tls_ctx	*tls_ctx_new(const struct config *cf, char *err, size_t errlen);
/* Free a context made by tls_ctx_new (sessions hold their own SSL refs). */
void		 tls_ctx_free(struct tls_ctx *t);
/* The SSL_CTX behind t, as an opaque pointer for endpoint. */
void		*tls_ctx_ssl_ctx(struct tls_ctx *t);

#endif
