/* push-notification driver "xaps": one POST /notify per message event to the
   xapsd daemon. The daemon decides what deserves a push, so every message
   event of every user is forwarded; the request is sent asynchronously so a
   slow or dead daemon never fails a delivery. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "llist.h"
#include "ioloop.h"
#include "http-client.h"
#include "mail-user.h"
#include "module-dir.h"
#include "push-notification-drivers.h"
#include "push-notification-events.h"
#include "push-notification-event-message-common.h"
#include "push-notification-event-messagenew.h"
#include "push-notification-event-messageappend.h"
#include "push-notification-txn-msg.h"
#include "xaps-common.h"

#define XAPS_DRIVER_NAME "xaps"

XAPS_EXPORT extern const char *xaps_push_notification_plugin_version;
XAPS_EXPORT extern const char *xaps_push_notification_plugin_dependencies[];
XAPS_EXPORT void xaps_push_notification_plugin_init(struct module *module);
XAPS_EXPORT void xaps_push_notification_plugin_deinit(void);

const char *xaps_push_notification_plugin_version = DOVECOT_ABI_VERSION;
const char *xaps_push_notification_plugin_dependencies[] = {
	"push_notification", NULL
};

/* Message-level events worth telling the daemon about. Mailbox events are
   left out: the driver has no per-mailbox callback, so recording them would
   only cost work. */
static const char *const xaps_message_events[] = {
	"FlagsClear",
	"FlagsSet",
	"MessageAppend",
	"MessageExpunge",
	"MessageNew",
	"MessageRead",
	"MessageTrash",
};

struct xaps_notify_request;

struct xaps_push_user {
	struct event *event;
	struct xaps_config conf;
	const char *username;
	/* Requests of this user still in flight. */
	struct xaps_notify_request *requests;
	unsigned int pending;
	/* Set while the user's deinit waits for its requests. */
	struct ioloop *wait_ioloop;
};

struct xaps_notify_request {
	struct xaps_notify_request *prev, *next;
	struct xaps_push_user *puser;
	struct http_client_request *req;
	char *mailbox;
};

static void xaps_notify_request_free(struct xaps_notify_request *nreq)
{
	struct xaps_push_user *puser = nreq->puser;

	i_assert(puser->pending > 0);
	puser->pending--;
	DLLIST_REMOVE(&puser->requests, nreq);
	i_free(nreq->mailbox);
	i_free(nreq);
	if (puser->pending == 0 && puser->wait_ioloop != NULL)
		io_loop_stop(puser->wait_ioloop);
}

static int
xaps_driver_init(struct push_notification_driver_config *config ATTR_UNUSED,
		 struct mail_user *user, pool_t pool, void **context,
		 const char **error_r)
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
	/* Create the client now, while the user (and with it the SSL client
	   settings) is known for sure. */
	(void)xaps_http_client_get(user);
	*context = puser;
	return 0;
}

static bool xaps_driver_begin_txn(struct push_notification_driver_txn *dtxn)
{
	struct push_notification_event_messagenew_config *new_config;
	struct push_notification_event_messageappend_config *append_config;
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

	for (i = 0; i < N_ELEMENTS(xaps_message_events); i++) {
		const char *name = xaps_message_events[i];
		void *config = NULL;

		if (strcmp(name, "MessageNew") == 0)
			config = new_config;
		else if (strcmp(name, "MessageAppend") == 0)
			config = append_config;
		push_notification_event_init(dtxn, name, config);
	}
	return TRUE;
}

static void
xaps_notify_callback(const struct http_response *response,
		     struct xaps_notify_request *nreq)
{
	struct xaps_push_user *puser = nreq->puser;

	nreq->req = NULL;
	if (http_response_is_success(response)) {
		e_debug(puser->event, "notified daemon for user %s "
			"mailbox %s: %u", puser->username, nreq->mailbox,
			response->status);
	} else if (response->status == 404) {
		/* Normal for users without an Apple device. */
		e_debug(puser->event, "no registered device for user %s",
			puser->username);
	} else {
		e_error(puser->event, "POST /notify for user %s mailbox %s "
			"failed: %u %s", puser->username, nreq->mailbox,
			response->status, response->reason);
	}
	xaps_notify_request_free(nreq);
}

static void xaps_append_events(string_t *json,
			       struct push_notification_txn_msg *msg)
{
	struct push_notification_txn_event *const *event;
	bool first = TRUE;

	if (!array_is_created(&msg->eventdata) ||
	    array_count(&msg->eventdata) == 0)
		return;

	str_append(json, ",\"Events\": [");
	array_foreach(&msg->eventdata, event) {
		if (!first)
			str_append_c(json, ',');
		first = FALSE;
		xaps_json_append_string(json, (*event)->event->event->name);
	}
	str_append_c(json, ']');
}

static void
xaps_driver_process_msg(struct push_notification_driver_txn *dtxn,
			struct push_notification_txn_msg *msg)
{
	struct xaps_push_user *puser = dtxn->duser->context;
	struct xaps_notify_request *nreq;
	struct http_client_request *req;
	struct http_client *client;
	string_t *json;

	json = t_str_new(256);
	str_append(json, "{\"Username\":");
	xaps_json_append_string(json, puser->username);
	str_append(json, ",\"Mailbox\":");
	xaps_json_append_string(json, msg->mailbox);
	xaps_append_events(json, msg);
	str_append_c(json, '}');

	e_debug(puser->event, "POST /notify %s", str_c(json));

	client = xaps_http_client_get(dtxn->ptxn->muser);
	nreq = i_new(struct xaps_notify_request, 1);
	nreq->puser = puser;
	nreq->mailbox = i_strdup(msg->mailbox);
	req = xaps_http_post(client, &puser->conf, "/notify", json,
			     xaps_notify_callback, nreq);
	nreq->req = req;
	DLLIST_PREPEND(&puser->requests, nreq);
	puser->pending++;
	http_client_request_submit(req);
}

static void xaps_wait_timeout(struct xaps_push_user *puser)
{
	io_loop_stop(puser->wait_ioloop);
}

/* Let this user's requests finish before its memory goes away, but give up
   after timeout_msecs: an LMTP delivery must not hang on a stuck daemon.
   (http_client_wait() would wait for every user's requests and does not
   cope with a client that only has a backoff timer pending.) */
static void xaps_wait_pending(struct xaps_push_user *puser)
{
	struct http_client *client = xaps_http_client_peek();
	struct ioloop *prev_ioloop = current_ioloop, *prev_client_ioloop;
	struct timeout *to;

	if (puser->pending == 0 || client == NULL)
		return;

	e_debug(puser->event, "waiting for %u pending /notify requests",
		puser->pending);
	puser->wait_ioloop = io_loop_create();
	prev_client_ioloop = http_client_switch_ioloop(client);
	to = timeout_add(puser->conf.timeout_msecs, xaps_wait_timeout, puser);
	io_loop_run(puser->wait_ioloop);
	timeout_remove(&to);

	io_loop_set_current(prev_client_ioloop != NULL ?
			    prev_client_ioloop : prev_ioloop);
	(void)http_client_switch_ioloop(client);
	io_loop_set_current(puser->wait_ioloop);
	io_loop_destroy(&puser->wait_ioloop);

	while (puser->requests != NULL) {
		struct xaps_notify_request *nreq = puser->requests;

		e_error(puser->event, "POST /notify for user %s mailbox %s "
			"abandoned: no answer within %u ms", puser->username,
			nreq->mailbox, puser->conf.timeout_msecs);
		http_client_request_abort(&nreq->req);
		xaps_notify_request_free(nreq);
	}
}

static void xaps_driver_deinit(struct push_notification_driver_user *duser)
{
	struct xaps_push_user *puser = duser->context;

	xaps_wait_pending(puser);
	i_assert(puser->pending == 0);
	event_unref(&puser->event);
}

static void xaps_driver_cleanup(void)
{
	xaps_http_client_deinit();
}

static const struct push_notification_driver xaps_driver = {
	.name = XAPS_DRIVER_NAME,
	.v = {
		.init = xaps_driver_init,
		.begin_txn = xaps_driver_begin_txn,
		.process_msg = xaps_driver_process_msg,
		.deinit = xaps_driver_deinit,
		.cleanup = xaps_driver_cleanup,
	},
};

void xaps_push_notification_plugin_init(struct module *module ATTR_UNUSED)
{
	push_notification_driver_register(&xaps_driver);
}

void xaps_push_notification_plugin_deinit(void)
{
	push_notification_driver_unregister(&xaps_driver);
	xaps_http_client_deinit();
}
