/*
 * fuzz_driver: feeds a fuzz input to the tokenizer in pieces and aborts
 * (which libFuzzer reports) when an invariant callers rely on breaks.
 */
#include "fuzz_driver.h"

#include <stdlib.h>
#include <string.h>

#define FUZZ_MAX_CALLS	(1 << 20)	/* bound on parser calls per input */

/* Abort (a crash libFuzzer reports) when an invariant breaks. */
static void
fuzz_assert(int ok)
{
	if (!ok)
		abort();
}

/* Feed data in pieces chosen by ctrl and check the parser's promises. */
static void
fuzz_feed(struct imap_parser *pp, enum imap_dir dir, const unsigned char *data, size_t size)
{
	unsigned char ctrl[FUZZ_CTRL] = { 0 };
	struct imap_event ev;
	size_t off = 0, ci = 0, calls = 0, end, c;
	int inlit = 0;

	if (size > FUZZ_CTRL) {
		memcpy(ctrl, data, FUZZ_CTRL);
		data += FUZZ_CTRL;
		size -= FUZZ_CTRL;
	}
	imap_parse_init(pp, dir, (ctrl[0] & 1) ? 16 + ctrl[1] : 0);
	while (off < size && calls++ < FUZZ_MAX_CALLS) {
		unsigned char k = ctrl[ci++ % FUZZ_CTRL];

		end = off + 1 + (size_t)(k % 37) * (k & 0x80 ? 97 : 1);
		if (end > size)
			end = size;
		while (off < end || (inlit && imap_parse_literal_left(pp) == 0)) {
			if (calls++ >= FUZZ_MAX_CALLS)
				return;
			if (inlit && (k & 0x40) && !imap_parse_literal_wanted(pp)) {
				uint64_t left = imap_parse_literal_left(pp);
				size_t n = left < end - off ? (size_t)left : end - off;

				off += n;
				if (imap_parse_skip(pp, n))
					inlit = 0;
				continue;
			}
			c = imap_parse_feed(pp, data + off, end - off, &ev);
			fuzz_assert(c <= end - off);
			off += c;
			switch (ev.type) {
			case IMAP_EV_LITERAL_HEAD:
				fuzz_assert(ev.lit_len <= IMAP_MAX_LITERAL);
				fuzz_assert(imap_parse_literal_left(pp) == ev.lit_len);
				inlit = 1;
				if (dir == IMAP_DIR_CLIENT && ev.lit_sync && (k & 0x20)) {
					imap_parse_literal_cancel(pp);
					fuzz_assert(imap_parse_at_boundary(pp));
					inlit = 0;
				}
				break;
			case IMAP_EV_LITERAL_DONE:
				inlit = 0;
				break;
			case IMAP_EV_LINE:
				fuzz_assert(imap_parse_at_boundary(pp));
				fuzz_assert(memchr(imap_parse_line(pp)->tag, 0, sizeof(imap_parse_line(pp)->tag)) != NULL);
				fuzz_assert(memchr(imap_parse_line(pp)->user, 0, sizeof(imap_parse_line(pp)->user)) != NULL);
				fuzz_assert(imap_parse_line(pp)->len > 0);
				if (dir == IMAP_DIR_CLIENT && (k & 0x10))
					imap_parse_set_mode(pp, IMAP_MODE_COMMAND);
				break;
			case IMAP_EV_ERROR:
				fuzz_assert(pp->error[0] != '\0');
				c = imap_parse_feed(pp, data, size, &ev);
				fuzz_assert(c == 0 && ev.type == IMAP_EV_ERROR);
				return;
			default:
				break;
			}
			/* Sometimes give the buffers back, as the relay does. */
			if (k & 0x08)
				imap_parse_release(pp);
			if (c == 0 && ev.type == IMAP_EV_NONE)
				break;
		}
	}
}

/* Run one input through a fresh parser. */
void
fuzz_run(enum imap_dir dir, const unsigned char *data, size_t size)
{
	struct imap_parser p;

	memset(&p, 0, sizeof(p));
	fuzz_feed(&p, dir, data, size);
	imap_parse_free(&p);
}

