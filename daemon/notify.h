/*
 * notify.h — the systemd notification protocol (sd_notify) without
 * libsystemd: one datagram to the AF_UNIX socket named by $NOTIFY_SOCKET.
 */
#ifndef CAL_NOTIFY_H
#define CAL_NOTIFY_H

#include <stdint.h>

/*
 * Sends `state` (e.g. "READY=1\nSTATUS=serving") when $NOTIFY_SOCKET is set.
 * Returns 1 when sent, 0 when not running under a notify-aware manager,
 * -1 on a send error.  Never blocks.
 */
int cal_notify(const char *state);

/* The watchdog interval in microseconds from $WATCHDOG_USEC (checked against
 * $WATCHDOG_PID when set), or 0 when no watchdog is configured. */
uint64_t cal_notify_watchdog_usec(void);

#endif
