/* struct http_url's path: ENCODED has enc_path besides path, and a
   request goes to enc_path when it is set (2.4.5); PLAIN has only path.
   xaps-probe: ENCODED PLAIN
   xaps-absent: PLAIN enc_path */
#include "lib.h"
#include "http-url.h"

void probe(struct http_url *url);
void probe(struct http_url *url)
{
#if defined(ENCODED)
	url->enc_path = NULL;
	url->path = "/";
#elif defined(PLAIN)
	url->path = "/";
	url->enc_path = NULL;
#endif
}
