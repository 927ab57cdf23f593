/*
 * control: the control socket (control.socket) on the main thread, its
 * line protocol, the work it hands to the workers, and the
 * `imapgate ctl` client.
 */
#ifndef IMAPGATE_CONTROL_H
#define IMAPGATE_CONTROL_H

#include <stdint.h>

#include "config.h"

struct evbuffer;
struct gate;
struct server;
struct session;

/* Longest command line the socket reads. */
#define CONTROL_MAX_LINE	4096
/* Users whose logins the control socket delays at once (delay user U D). */
#define CONTROL_MAX_DELAYS	1024

/* Which sessions a command is about (all fields optional; all must match). */
struct control_filter {
	char			 id[20];	/* session id, "" = any */
	char			*user;		/* exact, ASCII case ignored; NULL = any */
	char			*server;	/* backend address as written; NULL = any */
	int			 has_cidr;	/* client network */
	struct config_cidr	 cidr;
	int			 state;		/* enum state_proto, -1 = any */
};

/* Open control.socket if configured (main thread, before privileges are dropped). */
int	control_open(struct gate *g);
/* Close it (and remove the socket file). */
void	control_close(struct gate *g);
/* A reload: reopen when control.socket changed. */
void	control_reload(struct gate *g);
/* A worker's share of the job its ev_ctl event announced. */
void	control_worker_run(struct server *srv);
/* Milliseconds a login of user must still wait (delay user U D), 0 if none. */
uint64_t control_login_delay(const char *user);

/* `imapgate ctl`: send one command, print the answer; the exit status. */
int	control_client(int argc, char **argv);

#endif
