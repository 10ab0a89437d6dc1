/* The plugins' settings from plugin { } (Dovecot 2.3; the Makefile builds
   this file where probes/settings.c finds plugin settings and no settings
   framework): one setting, xaps_config, of space-separated key=value tokens
   (the format of the original plugin, so that existing configurations keep
   working), plus xaps_secret, a setting of its own so that it can come from
   a root-only file. Bad values are logged and fall back to the defaults, as
   the original did. */

#include "lib.h"
#include "str.h"
#include "strnum.h"
#include "http-url.h"
#include "mail-user.h"
#include "xaps-common.h"

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
			if (str_to_uint(value, &num) < 0 ||
			    num > XAPS_MAX_MAX_RETRIES) {
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
	/* A setting of its own, so that it can be read from a file that only
	   root can read: xaps_secret = </etc/dovecot/xaps.secret */
	conf_r->secret = xaps_secret_trim(pool,
		mail_user_plugin_getenv(user, "xaps_secret"));
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
