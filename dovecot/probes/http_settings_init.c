/* Defaults of struct http_client_settings: FUNCTION fills them in with
   http_client_settings_init(pool, set) (and the client keeps a pointer to
   the struct); NONE has no such function (zero means the default).
   xaps-probe: FUNCTION NONE
   xaps-absent: NONE http_client_settings_init */
#include "lib.h"
#include "http-client.h"

void probe(pool_t pool, struct http_client_settings *set);
void probe(pool_t pool ATTR_UNUSED, struct http_client_settings *set ATTR_UNUSED)
{
#if defined(FUNCTION)
	http_client_settings_init(pool, set);
#elif defined(NONE)
	(void)http_client_settings_init;
#endif
}
