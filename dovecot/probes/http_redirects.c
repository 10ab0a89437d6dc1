/* The http_client_settings field for the redirects followed: REQUEST
   (request_max_redirects) or PLAIN (max_redirects).
   xaps-probe: REQUEST PLAIN */
#include "lib.h"
#include "http-client.h"

void probe(struct http_client_settings *set);
void probe(struct http_client_settings *set)
{
#if defined(REQUEST)
	set->request_max_redirects = 0;
#elif defined(PLAIN)
	set->max_redirects = 0;
#endif
}
