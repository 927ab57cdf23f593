/*
 * imapcmd: the one table of IMAP commands imapgate knows.
 *
 * For each command: its class (what it does to the session state), which
 * of its arguments imapgate reads, the mode it starts when the server
 * accepts it, and the state it needs.  The tokenizer (imap.c), the state
 * model (state.c) and the session all ask this table; nothing else keeps
 * command names.  Pure: no I/O, no libevent or OpenSSL.
 */
#ifndef IMAPGATE_IMAPCMD_H
#define IMAPGATE_IMAPCMD_H

/* What a command does to the state (also the index of the stats tables). */
enum imapcmd_class {
	IMAPCMD_ANY,		/* CAPABILITY NOOP ID ... */
	IMAPCMD_LOGIN,		/* LOGIN, AUTHENTICATE */
	IMAPCMD_STARTTLS,
	IMAPCMD_AUTH,		/* needs Authenticated or Selected */
	IMAPCMD_SELECT,		/* SELECT, EXAMINE */
	IMAPCMD_SELECTED,	/* needs Selected: FETCH, STORE, ... */
	IMAPCMD_CLOSE,		/* CLOSE, UNSELECT */
	IMAPCMD_IDLE,
	IMAPCMD_LOGOUT,
	IMAPCMD_COMPRESS,
	IMAPCMD_UNKNOWN,	/* not a command we know: the backend judges */
};

/* Which arguments the tokenizer reads (all others are only framed). */
enum imapcmd_args {
	IMAPCMD_ARGS_NONE,
	IMAPCMD_ARGS_USER,	/* LOGIN: the user (the password is never looked at) */
	IMAPCMD_ARGS_MAILBOX,	/* first argument is a mailbox */
	IMAPCMD_ARGS_SASL,	/* AUTHENTICATE: mechanism, then an initial response */
	IMAPCMD_ARGS_SUBCMD,	/* UID: the next word is the command */
};

/* What the client sends after the server accepted the command. */
enum imapcmd_starts {
	IMAPCMD_STARTS_NONE,	/* more commands */
	IMAPCMD_STARTS_SASL,	/* SASL responses after each "+" */
	IMAPCMD_STARTS_IDLE,	/* DONE after "+" */
	IMAPCMD_STARTS_TLS,	/* a TLS handshake after the tagged OK */
	IMAPCMD_STARTS_COMPRESS,	/* compressed bytes after the tagged OK */
};

/* The protocol state a command needs (RFC 3501/9051 section 6). */
enum imapcmd_needs {
	IMAPCMD_NEEDS_ANY,
	IMAPCMD_NEEDS_NOT_AUTH,
	IMAPCMD_NEEDS_AUTH,	/* Authenticated or Selected */
	IMAPCMD_NEEDS_SELECTED,
};

struct imapcmd {
	const char		*name;		/* upper case */
	enum imapcmd_class	 cls;
	enum imapcmd_args	 args;
	enum imapcmd_starts	 starts;
	enum imapcmd_needs	 needs;
	int			 literals;	/* may carry literals (the server reads all its arguments) */
};

/* The entry for an upper-case command name, or NULL if we do not know it. */
const struct imapcmd *imapcmd_find(const char *name);
/* Does a command of this class need Authenticated or Selected state? */
int	imapcmd_needs_login(enum imapcmd_class cls);
/* Does a command of this class need Selected state? */
int	imapcmd_needs_selected(enum imapcmd_class cls);

#endif
