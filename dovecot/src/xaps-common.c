/* Shared helpers of the xaps Dovecot plugins: JSON string escaping, the
   per-process HTTP client and the requests to the daemon. The settings are
   read by xaps-settings-framework.c or xaps-settings-plugin-env.c, whichever
   the installed Dovecot supports (probes/settings.c). */

#include "lib.h"
#include "str.h"
#include "strnum.h"
#include "unichar.h"
#include "iostream-ssl.h"
#include "http-url.h"
#include "http-client.h"
#include "mail-user.h"
#include "xaps-common.h"
#include "xaps-compat.h"

/* Dovecot loads each plugin once per process, and one LMTP transaction has
   several users alive at once (the first recipient's user lives until the
   end of DATA, later ones come and go), all with requests on this client.
   So the client hangs off the module and lives while anyone holds a
   reference: destroying it drops every queued request without a callback,
   including those of users that are still waiting for theirs. */
static struct http_client *xaps_http_client = NULL;
static unsigned int xaps_http_client_refs = 0;

void xaps_json_append_string(string_t *dest, const char *src)
{
	const unsigned char *p = (const unsigned char *)src;
	size_t left = strlen(src);
	unichar_t chr;
	int n;

	str_append_c(dest, '"');
	while (left > 0) {
		if (*p == '"' || *p == '\\') {
			str_append_c(dest, '\\');
			str_append_c(dest, *p);
			n = 1;
		} else if (*p < 0x20 || *p == 0x7f) {
			switch (*p) {
			case '\n': str_append(dest, "\\n"); break;
			case '\r': str_append(dest, "\\r"); break;
			case '\t': str_append(dest, "\\t"); break;
			default: str_printfa(dest, "\\u%04x", *p); break;
			}
			n = 1;
		} else if (*p < 0x80) {
			str_append_c(dest, *p);
			n = 1;
		} else if ((n = uni_utf8_get_char_n(p, left, &chr)) > 0) {
			str_append_data(dest, p, n);
		} else {
			/* Encoding/json decoders reject invalid UTF-8, and
			   the daemon would answer 400 for the whole request. */
			str_append(dest, "\\ufffd");
			n = 1;
		}
		p += n;
		left -= n;
	}
	str_append_c(dest, '"');
}

/* The client keeps a pointer to its settings (Dovecot 2.4), so they live in
   a pool that goes with the client. */
static pool_t xaps_http_client_pool = NULL;

static void xaps_http_client_destroy(void)
{
	if (xaps_http_client != NULL)
		http_client_deinit(&xaps_http_client);
	if (xaps_http_client_pool != NULL)
		pool_unref(&xaps_http_client_pool);
}

struct http_client *xaps_http_client_ref(struct mail_user *user)
{
	struct http_client_settings *set;

	xaps_http_client_refs++;
	if (xaps_http_client != NULL)
		return xaps_http_client;

	xaps_http_client_pool = pool_alloconly_create("xaps http client", 1024);
	set = p_new(xaps_http_client_pool, struct http_client_settings, 1);
	xaps_http_client_settings_init(xaps_http_client_pool, set);
	/* SSL and debug settings: the user's, or its event's. */
	xaps_http_client_settings_ssl(set, user, xaps_http_client_pool);
	xaps_http_client_settings_debug(set, user);
	set->XAPS_HTTP_SET_MAX_REDIRECTS = 0;
	set->XAPS_HTTP_SET_MAX_ATTEMPTS = XAPS_DEFAULT_MAX_RETRIES + 1;
	set->user_agent = "dovecot-xaps-plugin";
	set->max_idle_time_msecs = 30 * 1000;
	/* A few connections, so that one request the daemon is slow to
	   answer does not hold back the others (the daemon answers /notify
	   before it pushes, so normally one connection is all that is used). */
	set->max_parallel_connections = 4;
	set->max_pipelined_requests = 1;
	/* Per-request values are set in xaps_http_post(); these only matter
	   for anything that slips through. No client-wide absolute timeout:
	   a registration reads its answer's body itself and is bounded by its
	   own timer, and an absolute timeout here would tear the request down
	   under that read whenever it fired first (at timeout_msecs >= this
	   value, always). /notify sets its own absolute timeout. */
	set->request_timeout_msecs = XAPS_DEFAULT_TIMEOUT_MSECS;
	set->request_absolute_timeout_msecs = 0;
	set->connect_timeout_msecs = XAPS_DEFAULT_TIMEOUT_MSECS;
	/* A daemon that is down must not stall deliveries for minutes. */
	set->connect_backoff_time_msecs = 100;
	set->connect_backoff_max_time_msecs = 2000;
	/* A private context keeps the two xaps modules apart inside one imap
	   process: waiting on one client must not move the other's
	   connections to a temporary ioloop. */
	xaps_http_client = xaps_http_client_init_private(set, user);
	return xaps_http_client;
}

void xaps_http_client_unref(void)
{
	if (xaps_http_client_refs == 0) {
		/* Never expected; losing a reference must not take the
		   mail process down with it. */
		i_error("xaps: HTTP client released more often than taken");
		return;
	}
	if (--xaps_http_client_refs == 0)
		xaps_http_client_destroy();
}

struct http_client *xaps_http_client_peek(void)
{
	return xaps_http_client;
}

void xaps_http_client_deinit(void)
{
	xaps_http_client_refs = 0;
	xaps_http_client_destroy();
}

#undef xaps_http_post
struct http_client_request *
xaps_http_post(struct http_client *client, const struct xaps_config *conf,
	       const char *path, const string_t *json,
	       http_client_request_callback_t *callback, void *context)
{
	struct http_client_request *req;
	struct http_url target;

	/* Whatever path the admin put into url= is replaced, as the original
	   plugin did; scheme, host, port and userinfo are kept. */
	target = *conf->url;
	xaps_http_url_set_path(&target, path);
	target.enc_query = NULL;
	target.enc_fragment = NULL;

	req = (http_client_request_url)(client, "POST", &target, callback,
					context);
	http_client_request_add_header(req, "Content-Type",
				       "application/json; charset=utf-8");
	if (conf->secret != NULL) {
		http_client_request_add_header(req, "Authorization",
			t_strconcat("Bearer ", conf->secret, NULL));
	}
	http_client_request_set_payload_data(req, str_data(json),
					     str_len(json));
	http_client_request_set_max_attempts(req, conf->max_retries + 1);
	http_client_request_set_attempt_timeout_msecs(req,
						      conf->timeout_msecs);
	return req;
}

const char *xaps_one_line(const unsigned char *data, size_t size,
			  size_t max_len)
{
	string_t *str;
	size_t i, end;

	/* The daemon explains errors with a one-line body; keep that line. */
	while (size > 0 && (data[0] == ' ' || data[0] == '\t' ||
			    data[0] == '\r' || data[0] == '\n')) {
		data++;
		size--;
	}
	for (end = 0; end < size; end++) {
		if (data[end] == '\r' || data[end] == '\n')
			break;
	}
	while (end > 0 && (data[end-1] == ' ' || data[end-1] == '\t'))
		end--;

	str = t_str_new(I_MIN(end, max_len) + 4);
	for (i = 0; i < end && i < max_len; i++) {
		if (data[i] < 0x20 || data[i] >= 0x7f)
			str_append_c(str, '?');
		else
			str_append_c(str, data[i]);
	}
	if (end > max_len)
		str_append(str, "...");
	return str_c(str);
}
