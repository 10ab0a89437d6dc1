/* Dovecot 2.4's settings module for xaps: the config process and doveconf
   load every module in <moduledir>/settings/ and refuse settings that none
   of them declares ("Unknown setting: xaps_url"), so the plugins alone are
   not enough. Built as libxaps_settings.so; the symbol names follow from
   that file name. */

#include "lib.h"
#include "xaps-common.h"
#include "xaps-settings-framework.h"

XAPS_EXPORT extern const char *xaps_settings_version;
XAPS_EXPORT extern const struct setting_parser_info *const xaps_settings_set_infos[];

const char *xaps_settings_version = DOVECOT_ABI_VERSION;
const struct setting_parser_info *const xaps_settings_set_infos[] = {
	&xaps_setting_parser_info,
	NULL
};
