/* http_client_init_private(): EVENT takes an event (SSL and debug
   settings come from it), PLAIN only the settings.
   xaps-probe: EVENT PLAIN */
#include "lib.h"
#include "http-client.h"

struct http_client *probe(const struct http_client_settings *set,
			  struct event *event);
struct http_client *probe(const struct http_client_settings *set,
			  struct event *event ATTR_UNUSED)
{
#if defined(EVENT)
	return http_client_init_private(set, event);
#elif defined(PLAIN)
	return http_client_init_private(set);
#endif
}
