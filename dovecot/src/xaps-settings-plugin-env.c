/* The plugins' settings.

   Dovecot 2.3: one plugin setting, xaps_config, of space-separated
   key=value tokens (the format of the original plugin, so that existing
   configurations keep working), plus xaps_secret, a setting of its own so
   that it can come from a root-only file. Bad values are logged and fall
   back to the defaults, as the original did.

   Dovecot 2.4: ordinary top-level settings (xaps_url, xaps_user_lookup,
   xaps_max_retries, xaps_timeout, xaps_mailbox_confirm, xaps_secret_file)
   declared to Dovecot's settings framework. The config process checks them
   (doveconf names a bad value), which is why the same declaration is also
   built into the settings module xaps-settings-module.c. Per-user values
   come from userdb fields of the same names. */

#include "lib.h"
#include "str.h"
#include "strnum.h"
#include "http-url.h"
#include "mail-user.h"
#include "xaps-common.h"

#if DOVECOT_PREREQ(2, 4, 0)
#  include "settings.h"
#  include "settings-parser.h"
#endif

/* The secret as sent in the Authorization header: surrounding blanks and
   line ends (a file usually ends with one) are not part of it. NULL when
   there is none. */
static const char *xaps_secret_trim(pool_t pool, const char *secret)
{
	const char *end;

	if (secret == NULL)
		return NULL;
	while (*secret == ' ' || *secret == '\t' || *secret == '\r' ||
	       *secret == '\n')
		secret++;
	end = secret + strlen(secret);
	while (end > secret && (end[-1] == ' ' || end[-1] == '\t' ||
				end[-1] == '\r' || end[-1] == '\n'))
		end--;
	if (end == secret)
		return NULL;
	return p_strndup(pool, secret, end - secret);
}

#if !DOVECOT_PREREQ(2, 4, 0)

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


#else /* Dovecot 2.4 */

#include "xaps-settings.h"

#undef DEF
#define DEF(type, name) \
	SETTING_DEFINE_STRUCT_##type(#name, name, struct xaps_settings)

static const struct setting_define xaps_setting_defines[] = {
	DEF(STR_NOVARS, xaps_url),
	DEF(STR_NOVARS, xaps_user_lookup),
	DEF(UINT, xaps_max_retries),
	DEF(TIME_MSECS, xaps_timeout),
	DEF(BOOL, xaps_mailbox_confirm),
	DEF(FILE, xaps_secret_file),
	SETTING_DEFINE_LIST_END
};

static const struct xaps_settings xaps_default_settings = {
	.xaps_url = "",
	.xaps_user_lookup = "",
	.xaps_max_retries = XAPS_DEFAULT_MAX_RETRIES,
	.xaps_timeout = XAPS_DEFAULT_TIMEOUT_MSECS,
	.xaps_mailbox_confirm = TRUE,
	.xaps_secret_file = "",
};

/* Runs in doveconf and the config process as well as in the mail
   processes: a bad value stops Dovecot from starting, with the setting and
   the value named, instead of disabling push at run time. */
static bool xaps_settings_check(void *_set, pool_t pool, const char **error_r)
{
	struct xaps_settings *set = _set;
	const char *error;

	if (set->xaps_url[0] != '\0') {
		if (http_url_parse(set->xaps_url, NULL,
				   HTTP_URL_ALLOW_USERINFO_PART, pool,
				   &set->parsed_url, &error) < 0) {
			*error_r = t_strdup_printf(
				"xaps_url: invalid URL '%s' (an absolute "
				"http:// or https:// URL is needed): %s",
				set->xaps_url, error);
			return FALSE;
		}
	}
	if (set->xaps_timeout == 0) {
		*error_r = "xaps_timeout: must be more than 0 (e.g. 5s)";
		return FALSE;
	}
	if (set->xaps_max_retries > XAPS_MAX_MAX_RETRIES) {
		*error_r = t_strdup_printf("xaps_max_retries: %u is more than "
			"%u", set->xaps_max_retries, XAPS_MAX_MAX_RETRIES);
		return FALSE;
	}
	return TRUE;
}

const struct setting_parser_info xaps_setting_parser_info = {
	.name = "xaps",
	.defines = xaps_setting_defines,
	.defaults = &xaps_default_settings,
	.struct_size = sizeof(struct xaps_settings),
	.pool_offset1 = 1 + offsetof(struct xaps_settings, pool),
	.check_func = xaps_settings_check,
};

int xaps_config_parse(struct mail_user *user, pool_t pool,
		      struct xaps_config *conf_r, const char **error_r)
{
	const struct xaps_settings *set;
	struct settings_file secret_file;
	const char *error;

	i_zero(conf_r);
	if (settings_get(user->event, &xaps_setting_parser_info, 0,
			 &set, &error) < 0) {
		*error_r = t_strdup_printf("xaps settings: %s", error);
		return -1;
	}
	if (set->parsed_url == NULL) {
		settings_free(set);
		*error_r = "xaps_url is not set";
		return -1;
	}
	/* Copied into the caller's pool: the settings go back right away. */
	conf_r->url = http_url_clone_with_userinfo(pool, set->parsed_url);
	conf_r->user_lookup = p_strdup(pool, set->xaps_user_lookup);
	conf_r->max_retries = set->xaps_max_retries;
	conf_r->timeout_msecs = set->xaps_timeout;
	conf_r->mailbox_confirm = set->xaps_mailbox_confirm;
	if (set->xaps_secret_file[0] != '\0') {
		settings_file_get(set->xaps_secret_file, pool, &secret_file);
		conf_r->secret = xaps_secret_trim(pool, secret_file.content);
	}
	settings_free(set);
	return 0;
}

const char *xaps_username(struct mail_user *user,
			  const struct xaps_config *conf)
{
	const char *const *field;
	size_t len;

	/* xaps_user_lookup names a userdb field; Dovecot 2.4 keeps the
	   fields that are not settings as "key=value" strings. */
	if (conf->user_lookup != NULL && *conf->user_lookup != '\0' &&
	    user->userdb_fields != NULL) {
		len = strlen(conf->user_lookup);
		for (field = user->userdb_fields; *field != NULL; field++) {
			if (strncmp(*field, conf->user_lookup, len) == 0 &&
			    (*field)[len] == '=' && (*field)[len + 1] != '\0')
				return *field + len + 1;
		}
	}
	return user->username;
}

#endif
