#ifndef XAPS_SETTINGS_FRAMEWORK_H
#define XAPS_SETTINGS_FRAMEWORK_H

/* The settings as Dovecot's settings framework (2.4) declares them. The
   plugins read them with settings_get() (xaps-settings-framework.c); the
   settings module (xaps-settings-module.c) hands the same declaration to
   the config process so that doveconf knows and checks them. */

#include "settings-parser.h"

struct xaps_settings {
	pool_t pool;

	const char *xaps_url;
	const char *xaps_user_lookup;
	unsigned int xaps_max_retries;
	unsigned int xaps_timeout;
	bool xaps_mailbox_confirm;
	const char *xaps_secret_file;

	/* generated: */
	struct http_url *parsed_url;
};

extern const struct setting_parser_info xaps_setting_parser_info;

#endif
