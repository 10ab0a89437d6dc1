#ifndef XAPS_COMPAT_H
#define XAPS_COMPAT_H

/* Every difference between the Dovecot versions the plugin builds against,
   in one place. What the installed Dovecot offers is decided at build time
   by the probes in dovecot/probes/ (compiled against its headers by
   dovecot/probe.sh, never by comparing version numbers); their results are
   in the generated xaps-probes.h, and this header maps each onto the call
   the plugin makes. Nothing else in the plugin reads those results, apart
   from the Makefile's choice of the settings source (probes/settings.c).

   Each mapping is a macro, so that this header needs no Dovecot header of
   its own: an expansion is only compiled where the plugin uses it, with
   the headers that use needs. */

#include "xaps-probes.h"

/* --- push-notification driver ----------------------------------------- */

/* The parameters of the driver's init function; the plugin uses user,
   pool, context and error_r (probes/driver_init.c). */
#ifdef XAPS_DRIVER_INIT_NAME
#  define XAPS_DRIVER_INIT_PARAMS \
	struct mail_user *user, pool_t pool, \
	const char *name ATTR_UNUSED, void **context, const char **error_r
#else
#  define XAPS_DRIVER_INIT_PARAMS \
	struct push_notification_driver_config *config ATTR_UNUSED, \
	struct mail_user *user, pool_t pool, void **context, \
	const char **error_r
#endif

/* Records the event (by name) for this driver in the transaction
   (probes/event_init.c). */
#ifdef XAPS_EVENT_INIT_EVENT
#  define xaps_push_notification_event_init(dtxn, name, config) \
	push_notification_event_init(dtxn, name, config, (dtxn)->ptxn->event)
#else
#  define xaps_push_notification_event_init(dtxn, name, config) \
	push_notification_event_init(dtxn, name, config)
#endif

/* --- IMAP ----------------------------------------------------------------- */

/* Whether the client of cmd enabled UTF8=ACCEPT and so names mailboxes in
   UTF-8 rather than modified UTF-7 (probes/cmd_utf8.c). Where commands do
   not know, Dovecot names mailboxes in modified UTF-7 for every client. */
#ifdef XAPS_CMD_UTF8_FIELD
#  define xaps_cmd_utf8(cmd) ((cmd)->utf8)
#else
#  define xaps_cmd_utf8(cmd) ((void)(cmd), FALSE)
#endif

/* Appends src as an IMAP string for the client of cmd: quoted, with UTF-8
   in it only for a client that enabled UTF8=ACCEPT, else a literal where a
   quoted string cannot hold it (probes/imap_quote.c). */
#ifdef XAPS_IMAP_QUOTE_FLAGS
#  define xaps_imap_append_string(dest, src, cmd) \
	imap_append_string(dest, src, \
			   xaps_cmd_utf8(cmd) ? IMAP_QUOTE_FLAG_UTF8 : 0)
#else
#  define xaps_imap_append_string(dest, src, cmd) \
	imap_append_string(dest, src)
#endif

/* The namespace of the mailbox name the client of cmd sent; *mailbox
   becomes the internal (UTF-8) name (probes/find_namespace.c). */
#ifdef XAPS_FIND_NAMESPACE_CMD
#  define xaps_client_find_namespace(cmd, mailbox, error_r) \
	client_find_namespace_full(cmd, mailbox, error_r)
#else
#  define xaps_client_find_namespace(cmd, mailbox, error_r) \
	client_find_namespace_full((cmd)->client, mailbox, error_r)
#endif

/* --- HTTP client -------------------------------------------------------- */

/* Makes url's path (the plain, not yet encoded) path: where struct http_url
   also has an encoded path, a request goes there when it is set, so it is
   cleared (probes/url_enc_path.c). */
#ifdef XAPS_URL_ENC_PATH_ENCODED
#  define xaps_http_url_set_path(url, path_) STMT_START { \
	(url)->path = (path_); \
	(url)->enc_path = NULL; \
	} STMT_END
#else
#  define xaps_http_url_set_path(url, path_) ((url)->path = (path_))
#endif

/* Fills in the defaults of a struct http_client_settings allocated from
   pool, which must live as long as the client: where zero means the
   default, there is nothing to fill in (probes/http_settings_init.c). */
#ifdef XAPS_HTTP_SETTINGS_INIT_FUNCTION
#  define xaps_http_client_settings_init(pool, set) \
	http_client_settings_init(pool, set)
#else
#  define xaps_http_client_settings_init(pool, set) ((void)(pool))
#endif

/* The fields for the attempts per request and the redirects followed
   (probes/http_attempts.c, probes/http_redirects.c). */
#ifdef XAPS_HTTP_ATTEMPTS_REQUEST
#  define XAPS_HTTP_SET_MAX_ATTEMPTS request_max_attempts
#else
#  define XAPS_HTTP_SET_MAX_ATTEMPTS max_attempts
#endif
#ifdef XAPS_HTTP_REDIRECTS_REQUEST
#  define XAPS_HTTP_SET_MAX_REDIRECTS request_max_redirects
#else
#  define XAPS_HTTP_SET_MAX_REDIRECTS max_redirects
#endif

/* The user's SSL client settings (for https:// URLs), allocated from pool;
   otherwise they come with the user's event (probes/http_ssl.c). */
#ifdef XAPS_HTTP_SSL_USER_SETTINGS
#  define xaps_http_client_settings_ssl(set, user, pool) STMT_START { \
	struct ssl_iostream_settings *xaps_ssl_set = \
		p_new(pool, struct ssl_iostream_settings, 1); \
	mail_user_init_ssl_client_settings(user, xaps_ssl_set); \
	(set)->ssl = xaps_ssl_set; \
	} STMT_END
#else
#  define xaps_http_client_settings_ssl(set, user, pool) ((void)0)
#endif

/* The HTTP client's debug logging follows the user's mail_debug; otherwise
   it follows the user's event (probes/http_debug.c). */
#ifdef XAPS_HTTP_DEBUG_FIELD
#  define xaps_http_client_settings_debug(set, user) \
	((set)->debug = (user)->mail_debug)
#else
#  define xaps_http_client_settings_debug(set, user) ((void)0)
#endif

/* A client with a private context, with the user's event where the client
   takes one (probes/http_client_init.c). */
#ifdef XAPS_HTTP_CLIENT_INIT_EVENT
#  define xaps_http_client_init_private(set, user) \
	http_client_init_private(set, (user)->event)
#else
#  define xaps_http_client_init_private(set, user) \
	http_client_init_private(set)
#endif

#endif
