/* client_find_namespace_full(): CMD takes the command (2.4.5 decodes the
   name as the command's client negotiated), CLIENT takes the client.
   xaps-probe: CMD CLIENT */
#include "imap-common.h"
#include "imap-commands.h"
#include "imap-commands-util.h"

struct mail_namespace *probe(struct client_command_context *cmd,
			     const char **name);
struct mail_namespace *probe(struct client_command_context *cmd,
			     const char **name)
{
	const char *error;

#if defined(CMD)
	return client_find_namespace_full(cmd, name, &error);
#elif defined(CLIENT)
	return client_find_namespace_full(cmd->client, name, &error);
#endif
}
