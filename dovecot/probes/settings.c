/* How the plugin reads its settings.
   FRAMEWORK: Dovecot's settings framework (settings_get() with a
   setting_parser_info that a settings module also hands to the config
   process); PLUGIN_ENV: plugin { } settings (mail_user_plugin_getenv()).
   The Makefile builds src/xaps-settings-framework.c and the settings
   module for the first, src/xaps-settings-plugin-env.c for the second.
   xaps-probe: FRAMEWORK PLUGIN_ENV */
#include "lib.h"
#include "mail-user.h"

#if defined(FRAMEWORK)
#include "settings.h"
#include "settings-parser.h"

struct probe_settings {
	pool_t pool;
	const char *name;
	unsigned int count;
	unsigned int msecs;
	bool flag;
	const char *file;
};

static const struct setting_define probe_defines[] = {
	SETTING_DEFINE_STRUCT_STR_NOVARS("name", name, struct probe_settings),
	SETTING_DEFINE_STRUCT_UINT("count", count, struct probe_settings),
	SETTING_DEFINE_STRUCT_TIME_MSECS("msecs", msecs, struct probe_settings),
	SETTING_DEFINE_STRUCT_BOOL("flag", flag, struct probe_settings),
	SETTING_DEFINE_STRUCT_FILE("file", file, struct probe_settings),
	SETTING_DEFINE_LIST_END
};

static bool probe_check(void *set ATTR_UNUSED, pool_t pool ATTR_UNUSED,
			const char **error_r ATTR_UNUSED)
{
	return TRUE;
}

static const struct setting_parser_info probe_info = {
	.name = "probe",
	.defines = probe_defines,
	.struct_size = sizeof(struct probe_settings),
	.pool_offset1 = 1 + offsetof(struct probe_settings, pool),
	.check_func = probe_check,
};

int probe(struct mail_user *user, pool_t pool);
int probe(struct mail_user *user, pool_t pool)
{
	const struct probe_settings *set;
	struct settings_file file;
	const char *error, *const *fields = user->userdb_fields;

	if (settings_get(user->event, &probe_info, 0, &set, &error) < 0)
		return -1;
	settings_file_get(set->file, pool, &file);
	settings_free(set);
	return fields == NULL ? 0 : 1;
}
#elif defined(PLUGIN_ENV)
const char *probe(struct mail_user *user);
const char *probe(struct mail_user *user)
{
	return mail_user_plugin_getenv(user, "name");
}
#endif
