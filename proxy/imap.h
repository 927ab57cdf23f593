/*
 * imap: a pure, incremental IMAP tokenizer, one context per direction.
 *
 * No I/O and no libevent or OpenSSL here.  The caller feeds bytes in
 * whatever pieces the network gives; the parser splits the stream into
 * segments and tells the caller where each one ends:
 *
 *   line part  bytes up to and including CRLF (or a bare LF), or up to and
 *              including the CRLF that ends a literal header "{n}\r\n";
 *   literal    exactly n bytes, counted, never scanned and never kept
 *              (except a short first argument of LOGIN/SELECT/EXAMINE, see
 *              imap_parse_literal_wanted).
 *
 * A command or response is one or more line parts with literals between
 * them; when its last line part ends (IMAP_EV_LINE) imap_parse_line(p)
 * describes it.
 * The bytes themselves stay with the caller, who moves them as it likes.
 */
#ifndef IMAPGATE_IMAP_H
#define IMAPGATE_IMAP_H

#include <stddef.h>
#include <stdint.h>

struct imapcmd;

#define IMAP_MAX_TAG		64	/* longest tag we accept (RFC: no limit; real ones < 20) */
#define IMAP_MAX_ATOM		32	/* longest command name / status / code atom kept */
#define IMAP_MAX_ARG		255	/* longest user name / mailbox / mechanism kept */
#define IMAP_MAX_LITERAL	((uint64_t)1 << 40)	/* a literal length above this is an error */
#define IMAP_DEFAULT_MAX_LINE	(64 * 1024)
#define IMAP_LIT_TAIL		32	/* bytes kept from a line part's end to read "~{n+}" */

enum imap_dir {
	IMAP_DIR_CLIENT,	/* client to server: commands */
	IMAP_DIR_SERVER,	/* server to client: responses */
};

/* What the client side expects next (set by the parser, reset by the caller). */
enum imap_mode {
	IMAP_MODE_COMMAND,	/* tagged commands */
	IMAP_MODE_SASL,		/* after AUTHENTICATE: base64 lines or "*" */
	IMAP_MODE_IDLE,		/* after IDLE: "DONE" */
};

enum imap_event_type {
	IMAP_EV_NONE,		/* all bytes consumed, segment not finished */
	IMAP_EV_LINE,		/* a command/response ended with this line part; see imap_parse_line */
	IMAP_EV_LITERAL_HEAD,	/* a line part ended with a literal header; literal follows */
	IMAP_EV_LITERAL_DONE,	/* the literal's last byte was consumed; the line goes on */
	IMAP_EV_TOOLONG,	/* the current line part passed max_line (once per line) */
	IMAP_EV_ERROR,		/* the stream can no longer be followed; stop feeding */
};

enum imap_kind {
	IMAP_KIND_NONE,
	/* client */
	IMAP_KIND_COMMAND,	/* TAG NAME args */
	IMAP_KIND_SASL,		/* a base64 line inside AUTHENTICATE */
	IMAP_KIND_SASL_CANCEL,	/* "*" inside AUTHENTICATE */
	IMAP_KIND_DONE,		/* "DONE" ending IDLE */
	IMAP_KIND_INVALID,	/* not a command (no tag, no name, bad syntax) */
	/* server */
	IMAP_KIND_GREETING,	/* the first line: * OK / * PREAUTH / * BYE */
	IMAP_KIND_UNTAGGED,	/* "* ..." */
	IMAP_KIND_CONTINUATION,	/* "+ ..." */
	IMAP_KIND_TAGGED,	/* "TAG STATUS ..." */
};

enum imap_status {
	IMAP_STATUS_NONE,	/* not a status response (data, or client line) */
	IMAP_STATUS_OK,
	IMAP_STATUS_NO,
	IMAP_STATUS_BAD,
	IMAP_STATUS_BYE,
	IMAP_STATUS_PREAUTH,
	IMAP_STATUS_OTHER,	/* a tagged word that is none of the above (e.g. MAYBE) */
};

/* What the parser learned about the last complete command or response. */
struct imap_line {
	enum imap_kind		kind;
	char			tag[IMAP_MAX_TAG + 1];		/* "" if none could be read */
	char			name[IMAP_MAX_ATOM + 1];	/* client: command, upper case ("UID");
								   server untagged: response name
								   ("OK", "CAPABILITY", "EXISTS", "FETCH") */
	char			subname[IMAP_MAX_ATOM + 1];	/* client UID: "FETCH" etc. */
	const struct imapcmd	*command;	/* client: the command table entry of name, NULL if unknown */
	uint32_t		number;		/* server "* 5 EXISTS": 5 */
	int			has_number;
	enum imap_status	status;
	char			status_word[IMAP_MAX_ATOM + 1];	/* as written, upper case */
	char			code[IMAP_MAX_ATOM + 1];	/* "[CODE ...]" right after the status word, upper case, "" if none */
	/*
	 * Offsets into the line's bytes (from its first byte), valid when
	 * nliterals == 0 and !toolong: the status word, '[' and one past ']'
	 * of the code (code_off == code_end == 0 if none), and the text.
	 */
	size_t			status_off, code_off, code_end, text_off;
	char			arg[IMAP_MAX_ARG + 1];	/* SELECT/EXAMINE/STATUS...: mailbox;
							   AUTHENTICATE: mechanism; decoded astring */
	char			user[IMAP_MAX_ARG + 1];	/* LOGIN user, or AUTHENTICATE PLAIN authcid
							   (from SASL-IR or the SASL line) */
	int			sasl_ir;	/* AUTHENTICATE carried an initial response */
	unsigned		nliterals;	/* literals inside this command/response */
	int			toolong;	/* some line part passed max_line */
	uint64_t		len;		/* total bytes incl. literals and CRLF */
	int			bare_lf;	/* ended by LF without CR */
	/*
	 * Client lines only.  bad: why no server can be trusted to frame this
	 * command as we do (unterminated quoted string, a literal marker
	 * inside a quoted string or an atom, a SASL line that is not base64);
	 * NULL if none.  strict: why the command is not in the canonical form
	 * every server parses without error up to its literals (a double
	 * space, an unbalanced parenthesis, a NUL or bare CR); servers that
	 * stop at such an error skip the rest of the line without reading its
	 * literals, so a command carrying literals must have none.
	 */
	const char		*bad;
	const char		*strict;
};

/*
 * The parser's working buffers.  cur is the command or response being read;
 * once IMAP_EV_LINE has been returned the same storage is line, the complete
 * one, until the next call that feeds bytes resets it.  One struct rather
 * than a copy per response: no 800-byte copy per line.
 */
struct imap_work {
	char			 tok[IMAP_MAX_ARG + 1];	/* the token being read (never a password) */
	unsigned char		 tail[IMAP_LIT_TAIL];	/* last bytes of the line part, for "{n}" */
	union {
		struct imap_line cur;
		struct imap_line line;
	};
};

struct imap_parser {
	enum imap_dir		 dir;
	size_t			 max_line;
	enum imap_mode		 mode;
	int			 seen_greeting;		/* server: first line done */

	/* lexer state: private to imap.c */
	int			 lex;			/* line, literal or error */
	int			 hstate;		/* where the head scanner is */
	size_t			 part_len;		/* bytes in the current line part (before LF) */
	uint64_t		 lit_left;		/* literal bytes still to come */
	unsigned		 field;			/* which token of the line we are in */
	int			 cmd;			/* command class of cur.name */
	int			 is_uid;
	int			 skip_rest;		/* head done: only look for the line end */
	int			 no_lit;		/* server status/continuation: no literals */
	int			 pending_cr;		/* head saw CR, not yet known if CRLF */
	int			 fr;			/* client framing lexer state (every byte) */
	int			 fr_cr;			/* framing lexer saw CR, not yet known if CRLF */
	unsigned		 fr_depth;		/* open parentheses */
	int			 tok_bad;		/* token too long or with bad characters */
	int			 capture;		/* literal bytes go into tok */
	size_t			 tok_len;
	uint64_t		 tok_start;		/* offset of the token's first byte */
	size_t			 tail_len;		/* bytes in w->tail */
	uint32_t		 b64_acc;		/* SASL PLAIN decoder (wiped at line end) */
	int			 b64_bits, b64_nuls, b64_bad, sasl_first;
	size_t			 user_len;
	char			 sasl_mech[IMAP_MAX_ATOM + 1];	/* mechanism of the running AUTHENTICATE */
	/*
	 * The token and line buffers (about 1 KB) live in w, allocated when
	 * bytes are fed and given back by imap_parse_release at a boundary:
	 * an idle session (thousands of them in IDLE) holds only the few
	 * words of lexer state above.
	 */
	struct imap_work	*w;
	int			 line_done;		/* line is complete; reset cur before reading on */
	const char		*error;			/* set with IMAP_EV_ERROR ("" before) */
};

struct imap_event {
	enum imap_event_type	type;
	uint64_t		lit_len;	/* IMAP_EV_LITERAL_HEAD: literal size */
	int			lit_sync;	/* IMAP_EV_LITERAL_HEAD, client: "{n}" (waits for "+"),
						   0 for "{n+}" */
	int			lit8;		/* "~{n}" */
};

/* Initialise p for one direction; max_line 0 means IMAP_DEFAULT_MAX_LINE. */
void	imap_parse_init(struct imap_parser *p, enum imap_dir dir, size_t max_line);
/* Start p over as imap_parse_init would, keeping its direction, limit and buffers. */
void	imap_parse_restart(struct imap_parser *p);
/* Free p's working buffers (p may be initialised again afterwards). */
void	imap_parse_free(struct imap_parser *p);
/*
 * Give the working buffers back if p is at a boundary (no partial line or
 * literal); the next feed allocates them again.  imap_parse_line is invalid
 * afterwards.  Returns 1 if they were released.
 */
int	imap_parse_release(struct imap_parser *p);
/* The last complete command or response (after IMAP_EV_LINE). */
const struct imap_line *imap_parse_line(const struct imap_parser *p);
/* The command or response being read (after IMAP_EV_LITERAL_HEAD). */
const struct imap_line *imap_parse_current(const struct imap_parser *p);
/*
 * Consume bytes from buf up to and including the next segment boundary.
 * Returns how many bytes were consumed and fills ev.  Literal bytes fed
 * here are counted (and captured if imap_parse_literal_wanted).
 */
size_t	imap_parse_feed(struct imap_parser *p, const void *buf, size_t len,
	    struct imap_event *ev);
/* Bytes of the current literal still to come; 0 outside literal data. */
uint64_t imap_parse_literal_left(const struct imap_parser *p);
/* Should the caller feed the literal's bytes (short LOGIN/SELECT argument)? */
int	imap_parse_literal_wanted(const struct imap_parser *p);
/* Count n literal bytes the caller moved without feeding; 1 if the literal ended. */
int	imap_parse_skip(struct imap_parser *p, uint64_t n);
/*
 * The server refused a synchronizing literal (a tagged reply came instead
 * of "+"): the client will not send it.  The pending command ends here.
 */
void	imap_parse_literal_cancel(struct imap_parser *p);
/* Set the client side's mode (the state model ends SASL and IDLE). */
void	imap_parse_set_mode(struct imap_parser *p, enum imap_mode mode);
/* Is the parser at the start of a line (no partial line or literal pending)? */
int	imap_parse_at_boundary(const struct imap_parser *p);

/* Is code (upper case atom) in the IANA IMAP response-code registry? */
int	imap_code_is_standard(const char *code);

#endif
