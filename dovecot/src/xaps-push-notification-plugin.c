/* push-notification driver "xaps": one POST /notify per message event to the
   xapsd daemon. The daemon decides what deserves a push, so every message
   event of every user is forwarded; the request is sent asynchronously so a
   slow or dead daemon never fails a delivery. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "llist.h"
#include "ioloop.h"
#include "time-util.h"
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
#include "xaps-compat.h"

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

struct xaps_push_user {
	struct event *event;
	struct xaps_config conf;
	const char *username;
};

/* One /notify in flight. It owns everything its callback needs, because it
   may outlive the user it was made for: in an LMTP transaction with several
   recipients each later recipient's user is torn down right after its
   delivery, while the first one lives until the end of DATA. */
struct xaps_notify_request {
	struct xaps_notify_request *prev, *next;
	struct http_client_request *req;
	struct event *event;
	char *username;
	char *mailbox;
	unsigned int timeout_msecs;
	struct timeval deadline;
};

/* Every /notify of this process still in flight, and the push users alive.
   The requests are settled (waited for, or given up) when the last user
   goes: waiting at every user instead would make a transaction with N
   recipients wait up to N times timeout_msecs for a daemon that hangs. */
static struct xaps_notify_request *xaps_requests = NULL;
static unsigned int xaps_push_users = 0;
static struct ioloop *xaps_settle_ioloop = NULL;

static void xaps_notify_request_free(struct xaps_notify_request *nreq)
{
	DLLIST_REMOVE(&xaps_requests, nreq);
	event_unref(&nreq->event);
	i_free(nreq->username);
	i_free(nreq->mailbox);
	i_free(nreq);
	if (xaps_requests == NULL && xaps_settle_ioloop != NULL)
		io_loop_stop(xaps_settle_ioloop);
}

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
		xaps_push_notification_event_init(dtxn, name, config);
	}
	return TRUE;
}

static void
xaps_notify_callback(const struct http_response *response,
		     struct xaps_notify_request *nreq)
{
	nreq->req = NULL;
	if (response->status == HTTP_CLIENT_REQUEST_ERROR_TIMED_OUT) {
		e_error(nreq->event, "POST /notify for user %s mailbox %s: "
			"no answer within %u ms", nreq->username,
			nreq->mailbox, nreq->timeout_msecs);
	} else if (response->status >= HTTP_RESPONSE_STATUS_INTERNAL) {
		/* Not an HTTP status: the reason says what went wrong. */
		e_error(nreq->event, "POST /notify for user %s mailbox %s "
			"failed: %s", nreq->username, nreq->mailbox,
			response->reason);
	} else if (http_response_is_success(response)) {
		e_debug(nreq->event, "notified daemon for user %s "
			"mailbox %s: %u", nreq->username, nreq->mailbox,
			response->status);
	} else if (response->status == 404) {
		/* Normal for users without an Apple device. */
		e_debug(nreq->event, "no registered device for user %s",
			nreq->username);
	} else {
		e_error(nreq->event, "POST /notify for user %s mailbox %s "
			"failed: %u %s", nreq->username, nreq->mailbox,
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
	string_t *json;

	json = t_str_new(256);
	str_append(json, "{\"Username\":");
	xaps_json_append_string(json, puser->username);
	str_append(json, ",\"Mailbox\":");
	xaps_json_append_string(json, msg->mailbox);
	xaps_append_events(json, msg);
	str_append_c(json, '}');

	e_debug(puser->event, "POST /notify %s", str_c(json));

	nreq = i_new(struct xaps_notify_request, 1);
	nreq->event = event_create(puser->event);
	nreq->username = i_strdup(puser->username);
	nreq->mailbox = i_strdup(msg->mailbox);
	nreq->timeout_msecs = puser->conf.timeout_msecs;
	nreq->deadline = ioloop_timeval;
	timeval_add_msecs(&nreq->deadline, nreq->timeout_msecs);
	req = xaps_http_post(xaps_http_client_peek(), &puser->conf, "/notify",
			     json, xaps_notify_callback, nreq);
	/* The whole request, retries included; the answer's body is not
	   read here, so the HTTP client's absolute timeout can cover it. */
	http_client_request_set_timeout_msecs(req, nreq->timeout_msecs);
	nreq->req = req;
	DLLIST_PREPEND(&xaps_requests, nreq);
	http_client_request_submit(req);
}

static void xaps_settle_timeout(struct ioloop *ioloop)
{
	io_loop_stop(ioloop);
}

/* The last user is going: let the requests still in flight finish, then give
   up on the rest, so that the client is never destroyed with requests queued
   (that would drop them without their callbacks). Each request ends by itself
   within its timeout_msecs (its absolute timeout); the timer is a backstop a
   little past the latest deadline. Only the xaps client moves to the
   temporary ioloop: http_client_wait() would not cope with a client that has
   only a backoff timer pending. */
static void xaps_settle_requests(void)
{
	struct http_client *client = xaps_http_client_peek();
	struct ioloop *prev_ioloop = current_ioloop, *prev_client_ioloop;
	struct xaps_notify_request *nreq;
	struct timeval latest = ioloop_timeval;
	struct timeout *to;
	int msecs;

	if (xaps_requests == NULL || client == NULL)
		return;
	for (nreq = xaps_requests; nreq != NULL; nreq = nreq->next) {
		if (timeval_cmp(&nreq->deadline, &latest) > 0)
			latest = nreq->deadline;
	}
	msecs = timeval_diff_msecs(&latest, &ioloop_timeval) + 500;

	e_debug(xaps_requests->event, "waiting up to %d ms for pending "
		"/notify requests", msecs);
	xaps_settle_ioloop = io_loop_create();
	prev_client_ioloop = http_client_switch_ioloop(client);
	to = timeout_add(I_MAX(msecs, 0), xaps_settle_timeout,
			 xaps_settle_ioloop);
	io_loop_run(xaps_settle_ioloop);
	timeout_remove(&to);

	io_loop_set_current(prev_client_ioloop != NULL ?
			    prev_client_ioloop : prev_ioloop);
	(void)http_client_switch_ioloop(client);
	io_loop_set_current(xaps_settle_ioloop);
	io_loop_destroy(&xaps_settle_ioloop);

	while (xaps_requests != NULL) {
		nreq = xaps_requests;
		e_error(nreq->event, "POST /notify for user %s mailbox %s "
			"abandoned: no answer within %u ms", nreq->username,
			nreq->mailbox, nreq->timeout_msecs);
		if (nreq->req != NULL)
			http_client_request_abort(&nreq->req);
		xaps_notify_request_free(nreq);
	}
}

static void xaps_driver_deinit(struct push_notification_driver_user *duser)
{
	struct xaps_push_user *puser = duser->context;

	/* This user's requests, if any, stay in flight: they own what their
	   callbacks need. */
	if (xaps_push_users > 0 && --xaps_push_users == 0)
		xaps_settle_requests();
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
	xaps_http_client_deinit();
}
