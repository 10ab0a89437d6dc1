/* push_notification_event_init(): EVENT takes the transaction's event as a
   fourth argument, PLAIN does not.
   xaps-probe: EVENT PLAIN */
#include "lib.h"
#include "mail-user.h"
#include "push-notification-drivers.h"
#include "push-notification-events.h"
#include "push-notification-txn-msg.h"

void probe(struct push_notification_driver_txn *dtxn);
void probe(struct push_notification_driver_txn *dtxn)
{
#if defined(EVENT)
	push_notification_event_init(dtxn, "MessageNew", NULL,
				     dtxn->ptxn->event);
#elif defined(PLAIN)
	push_notification_event_init(dtxn, "MessageNew", NULL);
#endif
}
