/*
 * check: the assertion counter the C unit tests share.  Each test program
 * includes it once, counts every CHECK, prints each failure with its
 * place, and reports `checks` and `failures` at the end.
 */
#ifndef IMAPGATE_TEST_CHECK_H
#define IMAPGATE_TEST_CHECK_H

#include <stdio.h>

static int failures, checks;

#define CHECK(cond, ...) do {						\
	checks++;							\
	if (!(cond)) {							\
		failures++;						\
		printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);	\
		printf(__VA_ARGS__);					\
		printf("\n");						\
	}								\
} while (0)

#endif
