/*
 * fuzz_driver: the driver shared by the two libFuzzer targets.
 *
 * The first FUZZ_CTRL bytes of an input choose chunk sizes and a few
 * operations (skip instead of feed, a refused literal, a mode reset, a
 * small max_line); the rest is the IMAP stream.
 */
#ifndef IMAPGATE_FUZZ_DRIVER_H
#define IMAPGATE_FUZZ_DRIVER_H

#include <stddef.h>

#include "imap.h"

#define FUZZ_CTRL	8	/* control bytes taken from the input's start */

/* Feed data to a fresh parser for dir, checking the parser's promises. */
void	fuzz_run(enum imap_dir dir, const unsigned char *data, size_t size);

#endif
