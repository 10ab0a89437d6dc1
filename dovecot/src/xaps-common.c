/* Shared helpers of the xaps Dovecot plugins: xaps_config parsing, JSON
   string escaping and the per-process HTTP client. */

#include "lib.h"
#include "str.h"
#include "strnum.h"
#include "unichar.h"
#include "iostream-ssl.h"
#include "http-url.h"
#include "http-client.h"
#include "mail-user.h"
#include "xaps-common.h"

/* Dovecot loads each plugin once per process, and one LMTP transaction has
   several users alive at once (the first recipient's user lives until the
   end of DATA, later ones come and go), all with requests on this client.
   So the client hangs off the module and lives while anyone holds a
   reference: destroying it drops every queued request without a callback,
   including those of users that are still waiting for theirs. */
static struct http_client *xaps_http_client = NULL;
static unsigned int xaps_http_client_refs = 0;

static bool xaps_parse_bool(const char *value, bool *result_r)
{
	if (strcasecmp(value, "yes") == 0 || strcasecmp(value, "true") == 0 ||
	    strcmp(value, "1") == 0) {
		*result_r = TRUE;
		return TRUE;
	}
	if (strcasecmp(value, "no") == 0 || strcasecmp(value, "false") == 0 ||
	    strcmp(value, "0") == 0) {
		*result_r = FALSE;
		return TRUE;
	}
	return FALSE;
}

int xaps_config_parse(struct mail_user *user, pool_t pool,
		      struct xaps_config *conf_r, const char **error_r)
{
	const char *setting, *const *tokens, *url = NULL, *error;
	unsigned int num;

	i_zero(conf_r);
	conf_r->max_retries = XAPS_DEFAULT_MAX_RETRIES;
	conf_r->timeout_msecs = XAPS_DEFAULT_TIMEOUT_MSECS;
	conf_r->mailbox_confirm = TRUE;

	setting = mail_user_plugin_getenv(user, "xaps_config");
	if (setting == NULL || *setting == '\0') {
		*error_r = "xaps_config setting is missing";
		return -1;
	}

	for (tokens = t_strsplit_spaces(setting, " \t"); *tokens != NULL;
	     tokens++) {
		const char *key = *tokens, *value = strchr(key, '=');

		if (value == NULL)
			value = "";
		else
			key = t_strdup_until(key, value++);

		if (strcmp(key, "url") == 0) {
			url = value;
		} else if (strcmp(key, "user_lookup") == 0) {
			conf_r->user_lookup = p_strdup(pool, value);
		} else if (strcmp(key, "max_retries") == 0) {
			if (str_to_uint(value, &num) < 0 || num > 100) {
				e_warning(user->event, "xaps: invalid "
					  "max_retries=%s, using %u", value,
					  XAPS_DEFAULT_MAX_RETRIES);
			} else {
				conf_r->max_retries = num;
			}
		} else if (strcmp(key, "timeout_msecs") == 0) {
			if (str_to_uint(value, &num) < 0 || num == 0) {
				e_warning(user->event, "xaps: invalid "
					  "timeout_msecs=%s, using %u", value,
					  XAPS_DEFAULT_TIMEOUT_MSECS);
			} else {
				conf_r->timeout_msecs = num;
			}
		} else if (strcmp(key, "mailbox_confirm") == 0) {
			if (!xaps_parse_bool(value, &conf_r->mailbox_confirm)) {
				e_warning(user->event, "xaps: invalid "
					  "mailbox_confirm=%s, using yes",
					  value);
				conf_r->mailbox_confirm = TRUE;
			}
		} else {
			e_warning(user->event,
				  "xaps: ignoring unknown xaps_config key '%s'",
				  key);
		}
	}

	if (url == NULL || *url == '\0') {
		*error_r = "xaps_config has no url=";
		return -1;
	}
	if (http_url_parse(url, NULL, HTTP_URL_ALLOW_USERINFO_PART, pool,
			   &conf_r->url, &error) < 0) {
		*error_r = t_strdup_printf("xaps_config url=%s is invalid: %s",
					   url, error);
		return -1;
	}
	return 0;
}

const char *xaps_username(struct mail_user *user,
			  const struct xaps_config *conf)
{
	const char *name;

	if (conf->user_lookup != NULL && *conf->user_lookup != '\0') {
		name = mail_user_plugin_getenv(user, conf->user_lookup);
		if (name != NULL && *name != '\0')
			return name;
	}
	return user->username;
}

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

struct http_client *xaps_http_client_ref(struct mail_user *user)
{
	struct http_client_settings set;
	struct ssl_iostream_settings ssl_set;

	xaps_http_client_refs++;
	if (xaps_http_client != NULL)
		return xaps_http_client;

	i_zero(&set);
	i_zero(&ssl_set);
	mail_user_init_ssl_client_settings(user, &ssl_set);
	set.ssl = &ssl_set;
	set.debug = user->mail_debug;
	set.user_agent = "dovecot-xaps-plugin";
	set.max_idle_time_msecs = 30 * 1000;
	/* A few connections, so that one request the daemon is slow to
	   answer does not hold back the others (the daemon answers /notify
	   before it pushes, so normally one connection is all that is used). */
	set.max_parallel_connections = 4;
	set.max_pipelined_requests = 1;
	set.max_redirects = 0;
	/* Per-request values are set in xaps_http_post(); these only matter
	   for anything that slips through. */
	set.max_attempts = XAPS_DEFAULT_MAX_RETRIES + 1;
	set.request_timeout_msecs = XAPS_DEFAULT_TIMEOUT_MSECS;
	set.request_absolute_timeout_msecs = XAPS_DEFAULT_TIMEOUT_MSECS;
	set.connect_timeout_msecs = XAPS_DEFAULT_TIMEOUT_MSECS;
	/* A daemon that is down must not stall deliveries for minutes. */
	set.connect_backoff_time_msecs = 100;
	set.connect_backoff_max_time_msecs = 2000;
	/* A private context keeps the two xaps modules apart inside one imap
	   process: waiting on one client must not move the other's
	   connections to a temporary ioloop. */
	xaps_http_client = http_client_init_private(&set);
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
	if (--xaps_http_client_refs == 0 && xaps_http_client != NULL)
		http_client_deinit(&xaps_http_client);
}

struct http_client *xaps_http_client_peek(void)
{
	return xaps_http_client;
}

void xaps_http_client_deinit(void)
{
	xaps_http_client_refs = 0;
	if (xaps_http_client != NULL)
		http_client_deinit(&xaps_http_client);
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
	target.path = path;
	target.enc_query = NULL;
	target.enc_fragment = NULL;

	req = (http_client_request_url)(client, "POST", &target, callback,
					context);
	http_client_request_add_header(req, "Content-Type",
				       "application/json; charset=utf-8");
	http_client_request_set_payload_data(req, str_data(json),
					     str_len(json));
	http_client_request_set_max_attempts(req, conf->max_retries + 1);
	http_client_request_set_attempt_timeout_msecs(req,
						      conf->timeout_msecs);
	/* timeout_msecs bounds the whole request, retries included: the
	   attempt timeout alone restarts with every byte a stalling daemon
	   trickles and with every retry. */
	http_client_request_set_timeout_msecs(req, conf->timeout_msecs);
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
