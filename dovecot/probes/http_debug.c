/* The HTTP client's debug logging: FIELD has http_client_settings.debug;
   EVENT has not (debug follows the event the client is created with).
   xaps-probe: FIELD EVENT
   xaps-absent: EVENT debug */
#include "lib.h"
#include "http-client.h"

void probe(struct http_client_settings *set);
void probe(struct http_client_settings *set)
{
#if defined(FIELD)
	set->debug = TRUE;
#elif defined(EVENT)
	set->debug = 0;
#endif
}
