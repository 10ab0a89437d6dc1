#ifndef XAPS_NOTIFY_H
#define XAPS_NOTIFY_H

/* The /notify requests of one mail process (xaps-notify.c).

   The push-notification driver collects the message events of a mailbox
   transaction and hands over one set of event kinds per user and mailbox
   when the transaction commits. From there this queue owns the request:

   - a request waiting here is merged with later ones for the same user and
     mailbox (the daemon needs to know that the mailbox changed and which
     kinds of events happened, not how often);
   - at most XAPS_NOTIFY_MAX_IN_FLIGHT requests per daemon are handed to the
     HTTP client, always from a running ioloop, and each one's timeout
     starts then: a request is never given up because it waited here;
   - a daemon that did not answer is left alone for a while (1 s, doubling
     up to 10 s while it stays silent), so that a process with many users
     waits for a dead daemon about once, not once per user;
   - a request that fails for good is a warning once per user, mailbox and
     reason, and a debug line after that. */

#include "xaps-common.h"

/* Message events worth telling the daemon about, in the order they are
   listed in a /notify. */
extern const char *const xaps_notify_event_names[];
extern const unsigned int xaps_notify_event_count;

/* The bit of an event name in an event set, 0 for a name not listed. */
unsigned int xaps_notify_event_bit(const char *name);

/* Queue a /notify for username and mailbox with the event kinds in events
   (a set of xaps_notify_event_bit()s, not empty), sent with the settings in
   conf. Everything needed is copied: the user may be gone before it is
   sent. event is the parent of the request's log event. */
void xaps_notify_queue(const struct xaps_config *conf, struct event *event,
		       const char *username, const char *mailbox,
		       unsigned int events);

/* The last user of the process is going, and with it the HTTP client: send
   what is queued and wait for the answers, within the requests' timeouts.
   What a daemon that does not answer would make wait is given up at once
   and reported. Returns with nothing queued or in flight. */
void xaps_notify_settle(void);

/* Module unload: give up everything without waiting. */
void xaps_notify_deinit(void);

#endif
