/* netaddr: parsing and printing of socket addresses ("host:port", "[v6]:port", "*:port"). */
#ifndef IMAPGATE_NETADDR_H
#define IMAPGATE_NETADDR_H

#include <stddef.h>
#include <sys/socket.h>

#define NETADDR_STRLEN 64	/* "[v6 address]:port" with room to spare */

struct netaddr {
	struct sockaddr_storage	ss;
	socklen_t		len;
};

/*
 * Parse "host:port", "[v6]:port" or "*:port" into a; a host name is resolved
 * once here.  Returns 0, or -1 with a message in err.
 */
int	netaddr_parse(const char *text, int passive, struct netaddr *a,
	    char *err, size_t errlen);
/* Print a as "ip:port" or "[ip]:port" into buf. */
const char *netaddr_str(const struct sockaddr *sa, char *buf, size_t len);

/* The bare IP of sa as text, and its port. */
const char *netaddr_ip(const struct sockaddr *sa, char *buf, size_t len, unsigned *port);

#endif
