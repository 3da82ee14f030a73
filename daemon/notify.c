/*
 * notify.c — sd_notify over $NOTIFY_SOCKET (filesystem or abstract socket).
 */
#include "notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/parse.h"

int cal_notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	if (!path || !*path)
		return 0;
	size_t plen = strlen(path);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if ((path[0] != '/' && path[0] != '@') || plen >= sizeof(sa.sun_path))
		return -1;
	memcpy(sa.sun_path, path, plen);
	if (path[0] == '@')
		sa.sun_path[0] = '\0'; /* abstract namespace */
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
	ssize_t r = sendto(fd, state, strlen(state), MSG_NOSIGNAL | MSG_DONTWAIT,
			   (struct sockaddr *)&sa, alen);
	close(fd);
	return r < 0 ? -1 : 1;
}

uint64_t cal_notify_watchdog_usec(void)
{
	const char *u = getenv("WATCHDOG_USEC");
	if (!u || !*u)
		return 0;
	const char *p = getenv("WATCHDOG_PID");
	uint64_t pid, v;
	if (p && *p && (cal_parse_u64("WATCHDOG_PID", p, 1, UINT64_MAX, &pid, NULL) < 0 ||
			pid != (uint64_t)getpid()))
		return 0;
	if (cal_parse_u64("WATCHDOG_USEC", u, 1, UINT64_MAX, &v, NULL) < 0)
		return 0;
	return v;
}
