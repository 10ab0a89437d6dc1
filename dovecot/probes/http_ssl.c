/* The HTTP client's SSL settings: USER_SETTINGS copies the user's
   (mail_user_init_ssl_client_settings()) into http_client_settings.ssl;
   EVENT has neither (the client takes them from the event it is created
   with, see http_client_init.c).
   xaps-probe: USER_SETTINGS EVENT
   xaps-absent: EVENT mail_user_init_ssl_client_settings ssl */
#include "lib.h"
#include "iostream-ssl.h"
#include "http-client.h"
#include "mail-user.h"

void probe(struct mail_user *user, struct http_client_settings *set,
	   struct ssl_iostream_settings *ssl_set);
void probe(struct mail_user *user ATTR_UNUSED,
	   struct http_client_settings *set ATTR_UNUSED,
	   struct ssl_iostream_settings *ssl_set ATTR_UNUSED)
{
#if defined(USER_SETTINGS)
	mail_user_init_ssl_client_settings(user, ssl_set);
	set->ssl = ssl_set;
#elif defined(EVENT)
	(void)mail_user_init_ssl_client_settings;
	set->ssl = NULL;
#endif
}
