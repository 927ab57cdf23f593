/* imapcmd: the table of IMAP commands (see imapcmd.h). */
#include "imapcmd.h"

#include <stddef.h>
#include <string.h>

#define C_ANY		IMAPCMD_NEEDS_ANY
#define C_NAUTH		IMAPCMD_NEEDS_NOT_AUTH
#define C_AUTH		IMAPCMD_NEEDS_AUTH
#define C_SEL		IMAPCMD_NEEDS_SELECTED
#define A_NONE		IMAPCMD_ARGS_NONE
#define A_MBOX		IMAPCMD_ARGS_MAILBOX

/*
 * RFC 3501/9051 section 6 and the extensions clients use.  Literals: a
 * command whose arguments hold no string (or that has none) may not
 * carry one; Dovecot, for one, does not read the arguments of NOOP,
 * CAPABILITY, IDLE or an unknown command, and skips to the line end, so
 * literal data there would be read as commands by the server but as
 * data by a proxy that guessed otherwise.  The class of a
 * command follows from what it does to the state; the state it needs is
 * what RFC 3501 6.1-6.4 say (IDLE: RFC 2177, COMPRESS: RFC 4978).
 */
static const struct imapcmd imapcmd_table[] = {
	{ "CAPABILITY",	IMAPCMD_ANY,	  A_NONE, IMAPCMD_STARTS_NONE, C_ANY, 0 },
	{ "NOOP",	IMAPCMD_ANY,	  A_NONE, IMAPCMD_STARTS_NONE, C_ANY, 0 },
	{ "ID",		IMAPCMD_ANY,	  A_NONE, IMAPCMD_STARTS_NONE, C_ANY, 1 },
	{ "LOGOUT",	IMAPCMD_LOGOUT,	  A_NONE, IMAPCMD_STARTS_NONE, C_ANY, 0 },
	{ "LOGIN",	IMAPCMD_LOGIN,	  IMAPCMD_ARGS_USER, IMAPCMD_STARTS_NONE, C_NAUTH, 1 },
	{ "AUTHENTICATE", IMAPCMD_LOGIN,  IMAPCMD_ARGS_SASL, IMAPCMD_STARTS_SASL, C_NAUTH, 0 },
	{ "STARTTLS",	IMAPCMD_STARTTLS, A_NONE, IMAPCMD_STARTS_TLS, C_NAUTH, 0 },
	{ "ENABLE",	IMAPCMD_AUTH,	  A_NONE, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "SELECT",	IMAPCMD_SELECT,	  A_MBOX, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "EXAMINE",	IMAPCMD_SELECT,	  A_MBOX, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "CREATE",	IMAPCMD_AUTH,	  A_MBOX, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "DELETE",	IMAPCMD_AUTH,	  A_MBOX, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "RENAME",	IMAPCMD_AUTH,	  A_MBOX, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "SUBSCRIBE",	IMAPCMD_AUTH,	  A_MBOX, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "UNSUBSCRIBE", IMAPCMD_AUTH,	  A_MBOX, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "LIST",	IMAPCMD_AUTH,	  A_NONE, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "LSUB",	IMAPCMD_AUTH,	  A_NONE, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "XLIST",	IMAPCMD_AUTH,	  A_NONE, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "NAMESPACE",	IMAPCMD_AUTH,	  A_NONE, IMAPCMD_STARTS_NONE, C_AUTH, 0 },
	{ "STATUS",	IMAPCMD_AUTH,	  A_MBOX, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "APPEND",	IMAPCMD_AUTH,	  A_MBOX, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "IDLE",	IMAPCMD_IDLE,	  A_NONE, IMAPCMD_STARTS_IDLE, C_AUTH, 0 },
	{ "GETQUOTA",	IMAPCMD_AUTH,	  A_NONE, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "GETQUOTAROOT", IMAPCMD_AUTH,	  A_MBOX, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "SETQUOTA",	IMAPCMD_AUTH,	  A_NONE, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "GETACL",	IMAPCMD_AUTH,	  A_MBOX, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "SETACL",	IMAPCMD_AUTH,	  A_NONE, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "DELETEACL",	IMAPCMD_AUTH,	  A_NONE, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "LISTRIGHTS",	IMAPCMD_AUTH,	  A_NONE, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "MYRIGHTS",	IMAPCMD_AUTH,	  A_MBOX, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "GETMETADATA", IMAPCMD_AUTH,	  A_NONE, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "SETMETADATA", IMAPCMD_AUTH,	  A_NONE, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "COMPRESS",	IMAPCMD_COMPRESS, A_NONE, IMAPCMD_STARTS_COMPRESS, C_AUTH, 0 },
	{ "NOTIFY",	IMAPCMD_AUTH,	  A_NONE, IMAPCMD_STARTS_NONE, C_AUTH, 1 },
	{ "CHECK",	IMAPCMD_SELECTED, A_NONE, IMAPCMD_STARTS_NONE, C_SEL, 0 },
	{ "CLOSE",	IMAPCMD_CLOSE,	  A_NONE, IMAPCMD_STARTS_NONE, C_SEL, 0 },
	{ "UNSELECT",	IMAPCMD_CLOSE,	  A_NONE, IMAPCMD_STARTS_NONE, C_SEL, 0 },
	{ "EXPUNGE",	IMAPCMD_SELECTED, A_NONE, IMAPCMD_STARTS_NONE, C_SEL, 0 },
	{ "SEARCH",	IMAPCMD_SELECTED, A_NONE, IMAPCMD_STARTS_NONE, C_SEL, 1 },
	{ "FETCH",	IMAPCMD_SELECTED, A_NONE, IMAPCMD_STARTS_NONE, C_SEL, 1 },
	{ "STORE",	IMAPCMD_SELECTED, A_NONE, IMAPCMD_STARTS_NONE, C_SEL, 1 },
	{ "COPY",	IMAPCMD_SELECTED, A_NONE, IMAPCMD_STARTS_NONE, C_SEL, 1 },
	{ "MOVE",	IMAPCMD_SELECTED, A_NONE, IMAPCMD_STARTS_NONE, C_SEL, 1 },
	{ "UID",	IMAPCMD_SELECTED, IMAPCMD_ARGS_SUBCMD, IMAPCMD_STARTS_NONE, C_SEL, 1 },
	{ "SORT",	IMAPCMD_SELECTED, A_NONE, IMAPCMD_STARTS_NONE, C_SEL, 1 },
	{ "THREAD",	IMAPCMD_SELECTED, A_NONE, IMAPCMD_STARTS_NONE, C_SEL, 1 },
	{ "ESEARCH",	IMAPCMD_SELECTED, A_NONE, IMAPCMD_STARTS_NONE, C_SEL, 1 },
};

const struct imapcmd *
imapcmd_find(const char *name)
{
	/* Once per command line (the tokenizer keeps the result); the first byte sorts most out. */
	for (size_t i = 0; i < sizeof(imapcmd_table) / sizeof(imapcmd_table[0]); i++)
		if (name[0] == imapcmd_table[i].name[0] && strcmp(name, imapcmd_table[i].name) == 0)
			return &imapcmd_table[i];
	return NULL;
}

/* Commands that RFC 3501 6.3/6.4 allow only after login. */
int
imapcmd_needs_login(enum imapcmd_class cls)
{
	return cls == IMAPCMD_AUTH || cls == IMAPCMD_SELECT ||
	    cls == IMAPCMD_SELECTED || cls == IMAPCMD_CLOSE || cls == IMAPCMD_IDLE;
}

/* Commands that RFC 3501 6.4 allows only with a mailbox selected. */
int
imapcmd_needs_selected(enum imapcmd_class cls)
{
	return cls == IMAPCMD_SELECTED || cls == IMAPCMD_CLOSE;
}
