/* The /notify queue of one mail process; xaps-notify.h says what it
   promises. It lives as long as the module: the HTTP client it sends with
   comes and goes with the users (xaps-common.c), while what it knows about
   a daemon that does not answer must outlive them, or every user would
   find out again by waiting. */

#include "lib.h"
#include "array.h"
#include "hash.h"
#include "str.h"
#include "strescape.h"
#include "llist.h"
#include "ioloop.h"
#include "time-util.h"
#include "http-url.h"
#include "http-client.h"
#include "xaps-common.h"
#include "xaps-notify.h"

/* One request per connection of the HTTP client. */
#define XAPS_NOTIFY_MAX_IN_FLIGHT XAPS_HTTP_MAX_CONNECTIONS
/* After a request got no answer, the daemon is left alone this long before
   the next request tries again; doubling while it stays silent. */
#define XAPS_RETRY_MIN_MSECS 1000
#define XAPS_RETRY_MAX_MSECS 10000
/* A failure already warned about for a user, mailbox and reason is a debug
   line for this long (or until the daemon answers again after it was
   silent). */
#define XAPS_WARN_REPEAT_SECS 3600
/* The memory of warnings is forgotten as a whole beyond this many. */
#define XAPS_WARNED_MAX 1000

/* Reasons that are neither an HTTP status nor one of the HTTP client's
   errors (HTTP_RESPONSE_STATUS_INTERNAL and up). */
enum xaps_notify_failure {
	/* Not sent: the daemon did not answer a moment ago. */
	XAPS_NOTIFY_FAIL_NOT_SENT = 1,
	/* Still pending when the process could wait no longer. */
	XAPS_NOTIFY_FAIL_ABANDONED,
	/* No HTTP client to send with (not expected). */
	XAPS_NOTIFY_FAIL_NO_CLIENT,
};

const char *const xaps_notify_event_names[] = {
	"FlagsClear",
	"FlagsSet",
	"MessageAppend",
	"MessageExpunge",
	"MessageNew",
	"MessageRead",
	"MessageTrash",
};
const unsigned int xaps_notify_event_count =
	N_ELEMENTS(xaps_notify_event_names);

/* What the process knows about one daemon (one scheme://host:port). */
struct xaps_daemon {
	char *name;
	unsigned int in_flight;
	/* A request got no answer: the others wait until retry_at, when one
	   is sent to try (the probe); where the process cannot wait, they
	   are given up and reported. */
	bool silent;
	unsigned int retry_msecs;
	struct timeval retry_at;
	struct timeout *to_retry;
	/* /notify given up since the daemon fell silent. */
	unsigned int lost;
};

/* One /notify, queued or in flight. It owns everything it needs, because it
   may outlive the user it was made for. */
struct xaps_notify {
	struct xaps_notify *prev, *next;
	pool_t pool;
	struct xaps_daemon *daemon;
	struct event *event;
	/* Only what xaps_http_post() reads: url, secret, max_retries,
	   timeout_msecs. */
	struct xaps_config conf;
	const char *username, *mailbox;
	/* daemon, user and mailbox: the queue merges requests with the same
	   key, the memory of warnings adds the reason. */
	char *key;
	unsigned int events;
	struct http_client_request *req;
	/* While in flight: the time the process waited for I/O since the
	   request was handed over, and the timer that checks it against
	   timeout_msecs. */
	struct io_wait_timer *waited;
	struct timeout *to_deadline;
	bool sent;
	bool probe;
};

struct xaps_warned {
	time_t at;
};

static struct {
	/* Waiting to be sent, oldest first, and by key. */
	struct xaps_notify *head, *tail;
	HASH_TABLE(char *, struct xaps_notify *) queued;
	struct xaps_notify *in_flight;
	ARRAY(struct xaps_daemon *) daemons;
	/* Sends what is queued once the ioloop runs again. */
	struct timeout *to_pump;
	bool pumping, pump_again;
	/* Set while the last user waits for the answers. */
	struct ioloop *settle_ioloop;

	pool_t warned_pool;
	HASH_TABLE(char *, struct xaps_warned *) warned;
} xq;

static void xaps_notify_pump(void);

unsigned int xaps_notify_event_bit(const char *name)
{
	unsigned int i;

	for (i = 0; i < xaps_notify_event_count; i++) {
		if (strcmp(xaps_notify_event_names[i], name) == 0)
			return 1U << i;
	}
	return 0;
}

static struct xaps_daemon *xaps_daemon_get(const struct http_url *url)
{
	struct xaps_daemon *const *dp, *daemon;
	const char *name;

	name = t_strconcat(url->have_ssl ? "https://" : "http://",
			   http_url_create_authority(url), NULL);
	if (!array_is_created(&xq.daemons))
		i_array_init(&xq.daemons, 2);
	array_foreach(&xq.daemons, dp) {
		if (strcmp((*dp)->name, name) == 0)
			return *dp;
	}
	daemon = i_new(struct xaps_daemon, 1);
	daemon->name = i_strdup(name);
	array_push_back(&xq.daemons, &daemon);
	return daemon;
}

static void xaps_warned_forget(void)
{
	if (hash_table_is_created(xq.warned)) {
		hash_table_clear(xq.warned, TRUE);
		p_clear(xq.warned_pool);
	}
}

/* Whether this failure of this user and mailbox was warned about a short
   while ago; remembers it as warned now if not. */
static bool xaps_warned_before(const struct xaps_notify *n, unsigned int reason)
{
	struct xaps_warned *warned;
	const char *key = t_strdup_printf("%u\t%s", reason, n->key);

	if (!hash_table_is_created(xq.warned)) {
		xq.warned_pool = pool_alloconly_create("xaps warned", 4096);
		hash_table_create(&xq.warned, default_pool, 0, str_hash,
				  strcmp);
	}
	warned = hash_table_lookup(xq.warned, key);
	if (warned != NULL && ioloop_time - warned->at < XAPS_WARN_REPEAT_SECS)
		return TRUE;
	if (warned == NULL) {
		if (hash_table_count(xq.warned) >= XAPS_WARNED_MAX)
			xaps_warned_forget();
		warned = p_new(xq.warned_pool, struct xaps_warned, 1);
		hash_table_insert(xq.warned, p_strdup(xq.warned_pool, key),
				  warned);
	}
	warned->at = ioloop_time;
	return FALSE;
}

/* A /notify failed for good: a warning, unless this one was warned about a
   short while ago. */
static void xaps_notify_failed(struct xaps_notify *n, unsigned int reason,
			       const char *text)
{
	if (n->daemon->silent)
		n->daemon->lost++;
	if (xaps_warned_before(n, reason)) {
		e_debug(n->event, "POST /notify for user %s mailbox %s "
			"failed: %s (warned before)", n->username, n->mailbox,
			text);
	} else {
		e_warning(n->event, "POST /notify for user %s mailbox %s "
			  "failed: %s", n->username, n->mailbox, text);
	}
}

static void xaps_notify_check_settled(void)
{
	if (xq.settle_ioloop != NULL && xq.head == NULL &&
	    xq.in_flight == NULL)
		io_loop_stop(xq.settle_ioloop);
}

static void xaps_notify_free(struct xaps_notify *n)
{
	timeout_remove(&n->to_deadline);
	if (n->waited != NULL)
		io_wait_timer_remove(&n->waited);
	if (n->sent) {
		i_assert(n->daemon->in_flight > 0);
		n->daemon->in_flight--;
		DLLIST_REMOVE(&xq.in_flight, n);
	} else {
		hash_table_remove(xq.queued, n->key);
		DLLIST2_REMOVE(&xq.head, &xq.tail, n);
	}
	event_unref(&n->event);
	pool_unref(&n->pool);
}

static void xaps_daemon_answered(struct xaps_daemon *daemon,
				 struct event *event)
{
	if (!daemon->silent)
		return;
	daemon->silent = FALSE;
	timeout_remove(&daemon->to_retry);
	e_info(event, "push daemon %s answers again; %u /notify requests were "
	       "lost while it did not", daemon->name, daemon->lost);
	/* A new silence is worth new warnings. */
	xaps_warned_forget();
}

/* n got no answer. The first such request makes the daemon silent; a probe
   that fails makes the pause longer; others were sent before and change
   nothing. */
static void xaps_daemon_no_answer(struct xaps_daemon *daemon,
				  const struct xaps_notify *n,
				  const char *reason)
{
	if (!daemon->silent) {
		daemon->silent = TRUE;
		daemon->lost = 0;
		daemon->retry_msecs = XAPS_RETRY_MIN_MSECS;
		e_warning(n->event, "push daemon %s did not answer (%s): "
			  "/notify requests wait for it, or are given up where "
			  "the process cannot wait, until it answers again; "
			  "next try in %u ms", daemon->name, reason,
			  daemon->retry_msecs);
	} else if (n->probe) {
		daemon->retry_msecs = I_MIN(daemon->retry_msecs * 2,
					    XAPS_RETRY_MAX_MSECS);
	} else {
		return;
	}
	io_loop_time_refresh();
	daemon->retry_at = ioloop_timeval;
	timeval_add_msecs(&daemon->retry_at, daemon->retry_msecs);
}

static void
xaps_notify_response(const struct http_response *response,
		     struct xaps_notify *n)
{
	struct xaps_daemon *daemon = n->daemon;
	const char *reason;

	n->req = NULL;
	if (response->status < HTTP_RESPONSE_STATUS_INTERNAL) {
		xaps_daemon_answered(daemon, n->event);
		if (http_response_is_success(response)) {
			e_debug(n->event, "notified daemon for user %s "
				"mailbox %s: %u", n->username, n->mailbox,
				response->status);
		} else if (response->status == 404) {
			/* Normal for users without an Apple device. */
			e_debug(n->event, "no registered device for user %s",
				n->username);
		} else {
			xaps_notify_failed(n, response->status,
				t_strdup_printf("%u %s", response->status,
						response->reason));
		}
	} else {
		/* Not an HTTP status: the reason says what went wrong. */
		reason = response->reason;
		switch (response->status) {
		case HTTP_CLIENT_REQUEST_ERROR_HOST_LOOKUP_FAILED:
		case HTTP_CLIENT_REQUEST_ERROR_CONNECT_FAILED:
		case HTTP_CLIENT_REQUEST_ERROR_CONNECTION_LOST:
		case HTTP_CLIENT_REQUEST_ERROR_TIMED_OUT:
			xaps_daemon_no_answer(daemon, n, reason);
			break;
		default:
			break;
		}
		xaps_notify_failed(n, response->status, reason);
	}
	xaps_notify_free(n);
	xaps_notify_pump();
}

/* The request's time is up when the process has waited timeout_msecs for
   I/O since it was handed over, not when that much time has passed: while
   the process is busy (saving the next recipients' mail, expunging thousands
   of messages) nothing can be sent or read, and Dovecot runs the timers
   that are due before it reads what arrived meanwhile. So neither the
   HTTP client's timeouts nor a plain timer would tell a busy process from
   a silent daemon. */
static void xaps_notify_deadline(struct xaps_notify *n)
{
	uint64_t waited_msecs = io_wait_timer_get_usecs(n->waited) / 1000;
	const char *reason;

	timeout_remove(&n->to_deadline);
	if (waited_msecs < n->conf.timeout_msecs) {
		n->to_deadline = timeout_add(n->conf.timeout_msecs -
					     (unsigned int)waited_msecs,
					     xaps_notify_deadline, n);
		return;
	}
	http_client_request_abort(&n->req);
	reason = t_strdup_printf("no answer within %u ms",
				 n->conf.timeout_msecs);
	xaps_daemon_no_answer(n->daemon, n, reason);
	xaps_notify_failed(n, HTTP_CLIENT_REQUEST_ERROR_TIMED_OUT, reason);
	xaps_notify_free(n);
	xaps_notify_pump();
}

static void xaps_notify_json(string_t *json, const struct xaps_notify *n)
{
	const char *names[N_ELEMENTS(xaps_notify_event_names)];
	unsigned int i, count = 0;

	for (i = 0; i < xaps_notify_event_count; i++) {
		if ((n->events & (1U << i)) != 0)
			names[count++] = xaps_notify_event_names[i];
	}
	str_append(json, "{\"Username\":");
	xaps_json_append_string(json, n->username);
	str_append(json, ",\"Mailbox\":");
	xaps_json_append_string(json, n->mailbox);
	str_append(json, ",\"Events\": ");
	xaps_json_append_array(json, names, count);
	str_append_c(json, '}');
}

static void xaps_notify_submit(struct xaps_notify *n,
			       struct http_client *client)
{
	string_t *json = t_str_new(256);

	hash_table_remove(xq.queued, n->key);
	DLLIST2_REMOVE(&xq.head, &xq.tail, n);
	DLLIST_PREPEND(&xq.in_flight, n);
	n->sent = TRUE;
	n->probe = n->daemon->silent;
	n->daemon->in_flight++;

	xaps_notify_json(json, n);
	e_debug(n->event, "POST /notify %s", str_c(json));
	n->req = xaps_http_post(client, &n->conf, "/notify", json,
				xaps_notify_response, n);
	/* The whole request, retries included, is bounded by the deadline
	   below; the HTTP client's own timeout per attempt is off. */
	http_client_request_set_attempt_timeout_msecs(n->req, 0);
	n->waited = io_wait_timer_add();
	n->to_deadline = timeout_add(n->conf.timeout_msecs,
				     xaps_notify_deadline, n);
	http_client_request_submit(n->req);
}

static void xaps_daemon_retry(struct xaps_daemon *daemon)
{
	timeout_remove(&daemon->to_retry);
	xaps_notify_pump();
}

static void xaps_daemon_retry_later(struct xaps_daemon *daemon)
{
	long long msecs;

	if (daemon->to_retry != NULL)
		return;
	/* int in Dovecot 2.3, long long in 2.4 */
	msecs = timeval_diff_msecs(&daemon->retry_at, &ioloop_timeval);
	daemon->to_retry = timeout_add_to(io_loop_get_root(),
					  (unsigned int)I_MAX(msecs, 0) + 1,
					  xaps_daemon_retry, daemon);
}

static void xaps_notify_pump_once(void)
{
	struct http_client *client = xaps_http_client_peek();
	struct xaps_notify *n, *next;
	struct xaps_daemon *daemon;

	/* The request's timeout starts from the ioloop's time, which is stale
	   after the process was busy (a delivery to many recipients). */
	io_loop_time_refresh();
	for (n = xq.head; n != NULL; n = next) {
		next = n->next;
		daemon = n->daemon;
		if (client == NULL) {
			xaps_notify_failed(n, XAPS_NOTIFY_FAIL_NO_CLIENT,
					   "no HTTP client");
			xaps_notify_free(n);
		} else if (!daemon->silent) {
			if (daemon->in_flight < XAPS_NOTIFY_MAX_IN_FLIGHT)
				xaps_notify_submit(n, client);
		} else if (daemon->in_flight > 0) {
			/* Its answer decides. */
		} else if (timeval_cmp(&ioloop_timeval,
				       &daemon->retry_at) >= 0) {
			xaps_notify_submit(n, client);
		} else if (xq.settle_ioloop != NULL) {
			xaps_notify_failed(n, XAPS_NOTIFY_FAIL_NOT_SENT,
				t_strdup_printf("not sent: push daemon %s is "
					"not answering (next try in %lld ms)",
					daemon->name, (long long)
					timeval_diff_msecs(&daemon->retry_at,
							   &ioloop_timeval)));
			xaps_notify_free(n);
		} else {
			xaps_daemon_retry_later(daemon);
		}
	}
}

static void xaps_notify_pump(void)
{
	/* A response callback may run inside a submit and pump again. */
	if (xq.pumping) {
		xq.pump_again = TRUE;
		return;
	}
	xq.pumping = TRUE;
	do {
		xq.pump_again = FALSE;
		T_BEGIN {
			xaps_notify_pump_once();
		} T_END;
	} while (xq.pump_again);
	xq.pumping = FALSE;
	xaps_notify_check_settled();
}

static void xaps_notify_pump_timeout(void *context ATTR_UNUSED)
{
	timeout_remove(&xq.to_pump);
	xaps_notify_pump();
}

void xaps_notify_queue(const struct xaps_config *conf, struct event *event,
		       const char *username, const char *mailbox,
		       unsigned int events)
{
	struct xaps_daemon *daemon = xaps_daemon_get(conf->url);
	struct xaps_notify *n;
	const char *key;
	pool_t pool;

	i_assert(events != 0);
	key = t_strconcat(daemon->name, "\t", str_tabescape(username), "\t",
			  str_tabescape(mailbox), NULL);
	if (!hash_table_is_created(xq.queued))
		hash_table_create(&xq.queued, default_pool, 0, str_hash, strcmp);
	n = hash_table_lookup(xq.queued, key);
	if (n != NULL) {
		n->events |= events;
		return;
	}

	pool = pool_alloconly_create("xaps notify", 1024);
	n = p_new(pool, struct xaps_notify, 1);
	n->pool = pool;
	n->daemon = daemon;
	n->event = event_create(event);
	n->conf.url = http_url_clone_with_userinfo(pool, conf->url);
	n->conf.secret = p_strdup(pool, conf->secret);
	n->conf.max_retries = conf->max_retries;
	n->conf.timeout_msecs = conf->timeout_msecs;
	n->username = p_strdup(pool, username);
	n->mailbox = p_strdup(pool, mailbox);
	n->key = p_strdup(pool, key);
	n->events = events;
	DLLIST2_APPEND(&xq.head, &xq.tail, n);
	hash_table_insert(xq.queued, n->key, n);

	/* Sent from the ioloop, not from here: the process may be busy for
	   a while yet (delivering to the next recipients), and the request's
	   time runs from when it is handed to the HTTP client. */
	if (xq.to_pump == NULL && xq.settle_ioloop == NULL) {
		xq.to_pump = timeout_add_short_to(io_loop_get_root(), 0,
						  xaps_notify_pump_timeout,
						  NULL);
	}
}

static void xaps_daemons_stop_timers(void)
{
	struct xaps_daemon *const *dp;

	if (!array_is_created(&xq.daemons))
		return;
	array_foreach(&xq.daemons, dp)
		timeout_remove(&(*dp)->to_retry);
}

/* Long enough for everything pending to be sent in turns of
   XAPS_NOTIFY_MAX_IN_FLIGHT, each within its timeout, plus a probe: a
   backstop, the requests end by themselves well before. */
static unsigned int xaps_notify_settle_msecs(void)
{
	struct xaps_notify *n;
	unsigned int count = 0, longest = 0;

	for (n = xq.head; n != NULL; n = n->next) {
		count++;
		longest = I_MAX(longest, n->conf.timeout_msecs);
	}
	for (n = xq.in_flight; n != NULL; n = n->next) {
		count++;
		longest = I_MAX(longest, n->conf.timeout_msecs);
	}
	return ((count + XAPS_NOTIFY_MAX_IN_FLIGHT - 1) /
		XAPS_NOTIFY_MAX_IN_FLIGHT + 1) * longest + 1000;
}

static void xaps_notify_settle_timeout(struct ioloop *ioloop)
{
	io_loop_stop(ioloop);
}

/* Whatever is left: the process can wait no longer. */
static void xaps_notify_abandon_all(void)
{
	struct xaps_notify *n;

	while (xq.in_flight != NULL) {
		n = xq.in_flight;
		if (n->req != NULL)
			http_client_request_abort(&n->req);
		xaps_notify_failed(n, XAPS_NOTIFY_FAIL_ABANDONED,
			t_strdup_printf("no answer within %u ms, abandoned",
					n->conf.timeout_msecs));
		xaps_notify_free(n);
	}
	while (xq.head != NULL) {
		n = xq.head;
		xaps_notify_failed(n, XAPS_NOTIFY_FAIL_ABANDONED,
				   "not sent, abandoned");
		xaps_notify_free(n);
	}
}

/* Only the HTTP client moves to the temporary ioloop: waiting must not run
   anything else of the mail process. http_client_wait() is not used: it
   does not cope with a client that has only a backoff timer pending. */
void xaps_notify_settle(void)
{
	struct http_client *client = xaps_http_client_peek();
	struct ioloop *prev_ioloop = current_ioloop, *prev_client_ioloop;
	struct xaps_notify *n;
	struct timeout *to;

	timeout_remove(&xq.to_pump);
	xaps_daemons_stop_timers();
	if (xq.head == NULL && xq.in_flight == NULL)
		return;
	if (client == NULL) {
		/* Nothing can be in flight without a client. */
		xaps_notify_pump();
		return;
	}

	e_debug(xq.head != NULL ? xq.head->event : xq.in_flight->event,
		"sending and waiting for pending /notify requests");
	xq.settle_ioloop = io_loop_create();
	prev_client_ioloop = http_client_switch_ioloop(client);
	for (n = xq.in_flight; n != NULL; n = n->next) {
		n->to_deadline = io_loop_move_timeout(&n->to_deadline);
		n->waited = io_wait_timer_move(&n->waited);
	}
	to = timeout_add(xaps_notify_settle_msecs(),
			 xaps_notify_settle_timeout, xq.settle_ioloop);
	xaps_notify_pump();
	if (xq.head != NULL || xq.in_flight != NULL)
		io_loop_run(xq.settle_ioloop);
	timeout_remove(&to);
	/* What is left is given up below, after its timers are gone with
	   this ioloop. */
	for (n = xq.in_flight; n != NULL; n = n->next) {
		timeout_remove(&n->to_deadline);
		io_wait_timer_remove(&n->waited);
	}

	io_loop_set_current(prev_client_ioloop != NULL ?
			    prev_client_ioloop : prev_ioloop);
	(void)http_client_switch_ioloop(client);
	io_loop_set_current(xq.settle_ioloop);
	io_loop_destroy(&xq.settle_ioloop);

	xaps_notify_abandon_all();
}

void xaps_notify_deinit(void)
{
	struct xaps_daemon *const *dp;
	struct xaps_daemon *daemon;

	timeout_remove(&xq.to_pump);
	xaps_daemons_stop_timers();
	xaps_notify_abandon_all();
	if (array_is_created(&xq.daemons)) {
		array_foreach(&xq.daemons, dp) {
			daemon = *dp;
			i_free(daemon->name);
			i_free(daemon);
		}
		array_free(&xq.daemons);
	}
	if (hash_table_is_created(xq.queued))
		hash_table_destroy(&xq.queued);
	if (hash_table_is_created(xq.warned)) {
		hash_table_destroy(&xq.warned);
		pool_unref(&xq.warned_pool);
	}
}
