/*
 * tls_floor: the heap OpenSSL itself keeps per established, idle TLS server
 * connection, with nothing of imapgate or libevent around it.
 *
 * It completes N TLS handshakes over socketpairs (server and client SSL in
 * this one process, non-blocking), exchanges one byte of application data,
 * frees the client side and keeps the server SSL, as a proxy would for an
 * idle session.  SSL_MODE_RELEASE_BUFFERS is on, as in imapgate.  It prints
 * the growth of malloc's in-use bytes (mallinfo2) per kept connection: the
 * floor below which no proxy built on this OpenSSL can go per idle TLS
 * session, whatever it does with its own memory.
 *
 * usage: tls_floor CERT KEY [N [GROUPS [CIPHERSUITES]]]   (N default 2000)
 */
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define FLOOR_MAX_CONNS		100000	/* N upper bound */
#define FLOOR_MAX_STEPS		64	/* handshake steps before giving up */

/* Make fd non-blocking. */
static void
floor_nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* One connection: handshake, one byte each way; returns the server SSL or NULL. */
static SSL *
floor_connect(SSL_CTX *sctx, SSL_CTX *cctx)
{
	SSL *srv, *cli;
	int sv[2], done = 0;
	char b[16];

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		return NULL;
	floor_nonblock(sv[0]);
	floor_nonblock(sv[1]);
	srv = SSL_new(sctx);
	cli = SSL_new(cctx);
	if (srv == NULL || cli == NULL)
		exit(1);
	SSL_set_fd(srv, sv[0]);
	SSL_set_fd(cli, sv[1]);
	SSL_set_accept_state(srv);
	SSL_set_connect_state(cli);
	for (int i = 0; i < FLOOR_MAX_STEPS && done != 3; i++) {
		if (SSL_do_handshake(cli) == 1)
			done |= 1;
		if (SSL_do_handshake(srv) == 1)
			done |= 2;
	}
	/* The byte makes the server read past the handshake, as a real session does. */
	if (done != 3 || SSL_write(cli, "x", 1) != 1 || SSL_read(srv, b, sizeof(b)) != 1) {
		ERR_print_errors_fp(stderr);
		exit(1);
	}
	(void)SSL_read(cli, b, sizeof(b));	/* take the session tickets */
	SSL_free(cli);
	close(sv[1]);
	return srv;
}

/* Measure; print one key=value line. */
int
main(int argc, char **argv)
{
	SSL_CTX *sctx, *cctx;
	SSL **keep;
	struct mallinfo2 before, after;
	struct rlimit rl;
	long n = argc > 3 ? strtol(argv[3], NULL, 10) : 2000;

	if (argc < 3 || n < 1 || n > FLOOR_MAX_CONNS) {
		fprintf(stderr, "usage: tls_floor CERT KEY [N [GROUPS [CIPHERSUITES]]]\n");
		return 2;
	}
	/* Two descriptors per kept connection (the peer's is closed). */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)n + 64) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	sctx = SSL_CTX_new(TLS_server_method());
	cctx = SSL_CTX_new(TLS_client_method());
	if (sctx == NULL || cctx == NULL ||
	    SSL_CTX_use_certificate_chain_file(sctx, argv[1]) != 1 ||
	    SSL_CTX_use_PrivateKey_file(sctx, argv[2], SSL_FILETYPE_PEM) != 1 ||
	    (argc > 4 && SSL_CTX_set1_groups_list(cctx, argv[4]) != 1) ||
	    (argc > 5 && SSL_CTX_set_ciphersuites(cctx, argv[5]) != 1)) {
		ERR_print_errors_fp(stderr);
		return 1;
	}
	SSL_CTX_set_mode(sctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_mode(cctx, SSL_MODE_RELEASE_BUFFERS);
	if ((keep = calloc((size_t)n, sizeof(*keep))) == NULL)
		return 1;
	/* One connection first, so one-time allocations are not counted. */
	SSL_free(floor_connect(sctx, cctx));
	before = mallinfo2();
	for (long i = 0; i < n; i++)
		if ((keep[i] = floor_connect(sctx, cctx)) == NULL) {
			fprintf(stderr, "tls_floor: socketpair failed after %ld (descriptors?)\n", i);
			return 1;
		}
	after = mallinfo2();
	printf("openssl=\"%s\" conns=%ld version=%s cipher=%s bytes_per_conn=%.0f kib_per_conn=%.2f\n",
	    OpenSSL_version(OPENSSL_VERSION), n, SSL_get_version(keep[0]),
	    SSL_get_cipher(keep[0]), (double)(after.uordblks - before.uordblks) / (double)n,
	    (double)(after.uordblks - before.uordblks) / (double)n / 1024.0);
	return 0;
}
