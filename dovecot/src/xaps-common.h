#ifndef XAPS_COMMON_H
#define XAPS_COMMON_H

/* Helpers shared by the xaps_imap and xaps_push_notification modules.

   Each module links its own copy of this code and the symbols are hidden, so
   the two modules never share state even when both are loaded into the same
   imap process. */

#include "http-url.h"
#include "http-client.h"

struct mail_user;

#define XAPS_EXPORT __attribute__((visibility("default")))

#define XAPS_DEFAULT_MAX_RETRIES 6
#define XAPS_DEFAULT_TIMEOUT_MSECS 5000
#define XAPS_MAX_MAX_RETRIES 100

/* The plugin settings of one user, read by xaps-settings-framework.c or
   xaps-settings-plugin-env.c (the Makefile builds the one the installed
   Dovecot supports). */
struct xaps_config {
	/* Daemon URL as configured; the path is replaced per request. */
	struct http_url *url;
	/* Name of a userdb/plugin variable overriding the user name. */
	const char *user_lookup;
	unsigned int max_retries;
	unsigned int timeout_msecs;
	/* Echo "* XAPPLEPUSHSERVICE mailbox" lines for existing mailboxes. */
	bool mailbox_confirm;
	/* Sent as "Authorization: Bearer <secret>"; NULL for none. */
	const char *secret;
};

/* Read the user's settings into conf_r, allocating from pool. From plugin
   { } settings (Dovecot 2.3): unknown xaps_config tokens and unparsable
   numbers are logged and ignored (numbers fall back to their defaults, as
   the original plugin did); Dovecot's settings framework (2.4) has checked
   the values already. Returns 0 on success, -1 if there is no usable url
   (the plugins then stay off for this user). */
int xaps_config_parse(struct mail_user *user, pool_t pool,
		      struct xaps_config *conf_r, const char **error_r);

/* The name sent as "Username": the user_lookup plugin variable or userdb
   field if it is set and non-empty for this user, else the Dovecot user
   name. */
const char *xaps_username(struct mail_user *user,
			  const struct xaps_config *conf);

/* The secret as sent in the Authorization header: surrounding blanks and
   line ends (a file usually ends with one) are not part of it. NULL when
   there is none. */
const char *xaps_secret_trim(pool_t pool, const char *secret);

/* Append src as a JSON string literal (with the quotes). Invalid UTF-8 is
   replaced with U+FFFD so the result is always valid JSON. */
void xaps_json_append_string(string_t *dest, const char *src);

/* Take a reference on the module's HTTP client, creating it with the SSL
   client settings of the given user if nobody holds one. Every user of the
   client (a push-notification user, a running registration) holds one for
   as long as it has requests on the client. */
struct http_client *xaps_http_client_ref(struct mail_user *user);
/* Drop a reference; the last one destroys the client. */
void xaps_http_client_unref(void);
/* The module's HTTP client, or NULL when nobody holds a reference. */
struct http_client *xaps_http_client_peek(void);
/* Module unload: destroy the client whatever references are left. */
void xaps_http_client_deinit(void);

/* Build a POST of the JSON body to <url scheme/host/port><path> with the
   per-request retry and timeout settings of conf: timeout_msecs bounds each
   attempt. The caller submits it, and bounds the request as a whole: the
   attempt timeout alone restarts with every byte a stalling daemon
   trickles and with every retry. */
struct http_client_request *
xaps_http_post(struct http_client *client, const struct xaps_config *conf,
	       const char *path, const string_t *json,
	       http_client_request_callback_t *callback, void *context);
#define xaps_http_post(client, conf, path, json, callback, context) \
	xaps_http_post(client, conf, path, json - \
		CALLBACK_TYPECHECK(callback, void (*)( \
			const struct http_response *, typeof(context))), \
		(http_client_request_callback_t *)callback, context)

/* Make a response body safe to put on one log or IMAP text line: only its
   first non-empty line is kept, surrounding blanks are trimmed, control
   characters and non-ASCII bytes become '?', and the result is cut to
   max_len characters. */
const char *xaps_one_line(const unsigned char *data, size_t size,
			  size_t max_len);

#endif
