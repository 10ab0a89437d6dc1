/* The plugins' settings from Dovecot's settings framework (Dovecot 2.4; the
   Makefile builds this file where probes/settings.c finds it): ordinary
   top-level settings (xaps_url, xaps_user_lookup, xaps_max_retries,
   xaps_timeout, xaps_mailbox_confirm, xaps_secret_file). The config process
   checks them (doveconf names a bad value), which is why the same
   declaration is also built into the settings module xaps-settings-module.c.
   Per-user values come from userdb fields of the same names. */

#include "lib.h"
#include "str.h"
#include "http-url.h"
#include "mail-user.h"
#include "settings.h"
#include "settings-parser.h"
#include "xaps-common.h"
#include "xaps-settings-framework.h"

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
