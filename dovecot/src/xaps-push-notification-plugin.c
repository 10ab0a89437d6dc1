/* push-notification driver "xaps": tells the xapsd daemon which mailboxes
   changed. The events of one mailbox transaction are collected per mailbox
   and become one POST /notify when the transaction commits, with the kinds
   of events that happened; the daemon decides what deserves a push. The
   requests are sent asynchronously (xaps-notify.c), so a slow or dead daemon
   never fails a delivery. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "mail-user.h"
#include "module-dir.h"
#include "push-notification-drivers.h"
#include "push-notification-events.h"
#include "push-notification-event-message-common.h"
#include "push-notification-event-messagenew.h"
#include "push-notification-event-messageappend.h"
#include "push-notification-txn-msg.h"
#include "xaps-common.h"
#include "xaps-compat.h"
#include "xaps-notify.h"

#define XAPS_DRIVER_NAME "xaps"

XAPS_EXPORT extern const char *xaps_push_notification_plugin_version;
XAPS_EXPORT extern const char *xaps_push_notification_plugin_dependencies[];
XAPS_EXPORT void xaps_push_notification_plugin_init(struct module *module);
XAPS_EXPORT void xaps_push_notification_plugin_deinit(void);

const char *xaps_push_notification_plugin_version = DOVECOT_ABI_VERSION;
const char *xaps_push_notification_plugin_dependencies[] = {
	"push_notification", NULL
};

struct xaps_push_user {
	struct event *event;
	struct xaps_config conf;
	const char *username;
};

/* The event kinds of one mailbox transaction, per mailbox (a transaction
   has one, but nothing depends on that). */
struct xaps_push_mailbox {
	const char *name;
	unsigned int events;
};

struct xaps_push_txn {
	ARRAY(struct xaps_push_mailbox) mailboxes;
};

/* Push users alive in this process. Pending /notify requests are settled
   when the last one goes: waiting at every user instead would make a
   transaction with N recipients wait up to N times timeout_msecs for a
   daemon that hangs. */
static unsigned int xaps_push_users = 0;

/* Where the driver is set up by a push_notification block, the settings are
   still top-level ones (xaps_url, ...), whatever the block's name. */
static int xaps_driver_init(XAPS_DRIVER_INIT_PARAMS)
{
	struct xaps_push_user *puser;
	const char *error;

	puser = p_new(pool, struct xaps_push_user, 1);
	if (xaps_config_parse(user, pool, &puser->conf, &error) < 0) {
		/* Dovecot logs this prefixed with the driver name and runs
		   the user's session without the driver. */
		*error_r = error;
		return -1;
	}
	puser->username = p_strdup(pool, xaps_username(user, &puser->conf));
	puser->event = event_create(user->event);
	event_set_append_log_prefix(puser->event, "xaps: ");
	/* Every user holds the client while it lives, so the client is
	   created with a user's settings and outlives all their requests. */
	(void)xaps_http_client_ref(user);
	xaps_push_users++;
	*context = puser;
	return 0;
}

static bool xaps_driver_begin_txn(struct push_notification_driver_txn *dtxn)
{
	struct push_notification_event_messagenew_config *new_config;
	struct push_notification_event_messageappend_config *append_config;
	struct xaps_push_txn *txn;
	unsigned int i;

	/* The daemon needs neither headers nor body snippets, so Dovecot must
	   not parse the message for them (the original asked for Date, From,
	   To, Subject and a snippet). Zero flags cannot be used: Dovecot 2.3
	   then records no MessageNew/MessageAppend event at all. The message
	   flags come from the index and cost no parsing. */
	new_config = p_new(dtxn->ptxn->pool,
			   struct push_notification_event_messagenew_config, 1);
	new_config->flags = PUSH_NOTIFICATION_MESSAGE_FLAGS;
	append_config = p_new(dtxn->ptxn->pool,
			      struct push_notification_event_messageappend_config, 1);
	append_config->flags = PUSH_NOTIFICATION_MESSAGE_FLAGS;

	/* Only message events: the driver has no per-mailbox callback, so
	   recording mailbox events would only cost work. */
	for (i = 0; i < xaps_notify_event_count; i++) {
		const char *name = xaps_notify_event_names[i];
		void *config = NULL;

		if (strcmp(name, "MessageNew") == 0)
			config = new_config;
		else if (strcmp(name, "MessageAppend") == 0)
			config = append_config;
		xaps_push_notification_event_init(dtxn, name, config);
	}
	txn = p_new(dtxn->ptxn->pool, struct xaps_push_txn, 1);
	p_array_init(&txn->mailboxes, dtxn->ptxn->pool, 1);
	dtxn->context = txn;
	return TRUE;
}

/* Called for every message of a committed transaction: only collects. */
static void
xaps_driver_process_msg(struct push_notification_driver_txn *dtxn,
			struct push_notification_txn_msg *msg)
{
	struct xaps_push_txn *txn = dtxn->context;
	struct push_notification_txn_event *const *event;
	struct xaps_push_mailbox *mailbox = NULL, *box;

	if (!array_is_created(&msg->eventdata))
		return;
	array_foreach_modifiable(&txn->mailboxes, box) {
		if (strcmp(box->name, msg->mailbox) == 0) {
			mailbox = box;
			break;
		}
	}
	if (mailbox == NULL) {
		mailbox = array_append_space(&txn->mailboxes);
		mailbox->name = p_strdup(dtxn->ptxn->pool, msg->mailbox);
	}
	array_foreach(&msg->eventdata, event) {
		mailbox->events |=
			xaps_notify_event_bit((*event)->event->event->name);
	}
}

/* The transaction is over: one /notify per mailbox that saw an event. */
static void xaps_driver_end_txn(struct push_notification_driver_txn *dtxn,
				bool success)
{
	struct xaps_push_user *puser = dtxn->duser->context;
	struct xaps_push_txn *txn = dtxn->context;
	const struct xaps_push_mailbox *mailbox;

	if (!success || txn == NULL)
		return;
	array_foreach(&txn->mailboxes, mailbox) {
		if (mailbox->events != 0) {
			xaps_notify_queue(&puser->conf, puser->event,
					  puser->username, mailbox->name,
					  mailbox->events);
		}
	}
}

static void xaps_driver_deinit(struct push_notification_driver_user *duser)
{
	struct xaps_push_user *puser = duser->context;

	/* This user's requests, if any, stay queued or in flight: they own
	   what they need. */
	if (xaps_push_users > 0 && --xaps_push_users == 0)
		xaps_notify_settle();
	/* The client goes with the last user, not with this one. That is
	   also why the driver has no cleanup hook: Dovecot 2.3 runs it after
	   every single user's deinit. */
	xaps_http_client_unref();
	event_unref(&puser->event);
}

static const struct push_notification_driver xaps_driver = {
	.name = XAPS_DRIVER_NAME,
	.v = {
		.init = xaps_driver_init,
		.begin_txn = xaps_driver_begin_txn,
		.process_msg = xaps_driver_process_msg,
		.end_txn = xaps_driver_end_txn,
		.deinit = xaps_driver_deinit,
	},
};

void xaps_push_notification_plugin_init(struct module *module ATTR_UNUSED)
{
	push_notification_driver_register(&xaps_driver);
}

void xaps_push_notification_plugin_deinit(void)
{
	push_notification_driver_unregister(&xaps_driver);
	xaps_notify_deinit();
	xaps_http_client_deinit();
}
