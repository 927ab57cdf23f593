/* fuzz_usermap: libFuzzer target for the user map parser (syntax only, no DNS). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "usermap.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_USER_MAX	(USERMAP_MAX_KEY + 64)	/* bytes of input also looked up as a user */

/* Abort unless the errors are well formed: bounded, terminated, in file order. */
static void
fuzz_check_errors(const struct usermap_errors *errs)
{
	int line = 0;

	if (errs->n > USERMAP_MAX_ERRORS + 1)
		abort();
	for (size_t i = 0; i < errs->n; i++) {
		const struct usermap_error *e = &errs->v[i];
		if (memchr(e->msg, '\0', sizeof(e->msg)) == NULL || e->msg[0] == '\0')
			abort();
		if (e->line < line || e->col < 0 || e->col > USERMAP_MAX_LINE + 1 ||
		    (e->line > 0 && e->col == 0))
			abort();
		line = e->line;
	}
}

/* The key with its ASCII letters' case swapped must find the same entry. */
static void
fuzz_check_case(const struct usermap *m, const struct usermap_entry *e)
{
	char k[USERMAP_MAX_KEY + 1];
	size_t len = strlen(e->key);

	if (len > USERMAP_MAX_KEY)
		abort();
	for (size_t i = 0; i <= len; i++) {
		char c = e->key[i];
		k[i] = c >= 'a' && c <= 'z' ? (char)(c - 32) : c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
	}
	if (usermap_find(m, k) != e)
		abort();
}

/*
 * Parse; check the errors; on success every entry must be found by its
 * key in either case, with its target and lines in file order.  The
 * start of the input is also looked up as a user.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct usermap_errors errs;
	struct usermap *m;
	const struct usermap_entry *e;
	char user[FUZZ_USER_MAX + 1];
	size_t n, i;
	int line = 0;

	m = usermap_parse((const char *)data, size, 0, &errs);
	fuzz_check_errors(&errs);
	if ((m == NULL) != (errs.n > 0))
		abort();
	if (m == NULL)
		return 0;
	for (i = 0; (e = usermap_at(m, i)) != NULL; i++) {
		if (e->line <= line || e->target == NULL || e->target[0] == '\0' ||
		    e->addr == NULL || e->addr->len != 0 || usermap_find(m, e->key) != e)
			abort();
		line = e->line;
		fuzz_check_case(m, e);
	}
	if (i != usermap_count(m))
		abort();
	n = size < FUZZ_USER_MAX ? size : FUZZ_USER_MAX;
	memcpy(user, data, n);
	user[n] = '\0';
	e = usermap_find(m, user);
	if (e != NULL && (e->line < 1 || usermap_find(m, e->key) != e))
		abort();
	usermap_free(m);
	return 0;
}
