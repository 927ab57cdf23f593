/* netaddr: socket address parsing and printing. */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netaddr.h"

/* Split text into host and port, resolve, and store the first result in a. */
int
netaddr_parse(const char *text, int passive, struct netaddr *a, char *err,
    size_t errlen)
{
	char host[256];
	const char *orig = text, *port, *end;
	size_t hlen;

	memset(a, 0, sizeof(*a));
	if (text[0] == '[') {
		end = strchr(text, ']');
		if (end == NULL || end[1] != ':') {
			snprintf(err, errlen, "address \"%s\": expected [v6]:port", text);
			return -1;
		}
		hlen = (size_t)(end - text - 1);
		port = end + 2;
		text++;	/* from here on, messages quote orig */
	} else {
		end = strrchr(text, ':');
		if (end == NULL) {
			snprintf(err, errlen, "address \"%s\": expected host:port", text);
			return -1;
		}
		if (memchr(text, ':', (size_t)(end - text)) != NULL) {
			snprintf(err, errlen,
			    "address \"%s\": an IPv6 address must be written [v6]:port", text);
			return -1;
		}
		hlen = (size_t)(end - text);
		port = end + 1;
	}
	if (hlen == 0 || hlen >= sizeof(host)) {
		snprintf(err, errlen, "address \"%s\": bad host", orig);
		return -1;
	}
	memcpy(host, text, hlen);
	host[hlen] = '\0';

	char *pend;
	long pn = strtol(port, &pend, 10);
	if (*port == '\0' || *pend != '\0' || pn < 1 || pn > 65535) {
		snprintf(err, errlen, "address \"%s\": port must be 1-65535", orig);
		return -1;
	}

	if (strcmp(host, "*") == 0) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
		sin->sin_family = AF_INET;
		sin->sin_addr.s_addr = htonl(INADDR_ANY);
		sin->sin_port = htons((uint16_t)pn);
		a->len = sizeof(*sin);
		return 0;
	}

	struct addrinfo hints, *res;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = passive ? (AI_PASSIVE | AI_NUMERICHOST) : AI_ADDRCONFIG;
	int rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		snprintf(err, errlen, "address \"%s\": %s", orig, gai_strerror(rc));
		return -1;
	}
	memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
	a->len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

/* Format sa as ip:port or [ip]:port. */
const char *
netaddr_str(const struct sockaddr *sa, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
		snprintf(buf, len, "%s:%u", ip, ntohs(sin->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
		snprintf(buf, len, "[%s]:%u", ip, ntohs(sin6->sin6_port));
	} else
		snprintf(buf, len, "unknown");
	return buf;
}

/* Format sa's address without the port; the port goes to *port. */
const char *
netaddr_ip(const struct sockaddr *sa, char *buf, size_t len, unsigned *port)
{
	*port = 0;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &sin->sin_addr, buf, (socklen_t)len);
		*port = ntohs(sin->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &sin6->sin6_addr, buf, (socklen_t)len);
		*port = ntohs(sin6->sin6_port);
	} else
		snprintf(buf, len, "unknown");
	return buf;
}
