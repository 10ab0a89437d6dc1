/* What both settings readers (xaps-settings-framework.c,
   xaps-settings-plugin-env.c) share. Linked into the settings module too,
   which has nothing else of the plugins. */

#include "lib.h"
#include "xaps-common.h"

const char *xaps_secret_trim(pool_t pool, const char *secret)
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
