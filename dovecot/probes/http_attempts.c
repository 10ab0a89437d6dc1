/* The http_client_settings field for the attempts per request: REQUEST
   (request_max_attempts) or PLAIN (max_attempts).
   xaps-probe: REQUEST PLAIN */
#include "lib.h"
#include "http-client.h"

void probe(struct http_client_settings *set);
void probe(struct http_client_settings *set)
{
#if defined(REQUEST)
	set->request_max_attempts = 1;
#elif defined(PLAIN)
	set->max_attempts = 1;
#endif
}
