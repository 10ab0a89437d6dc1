/* Whether a command knows that its client enabled UTF8=ACCEPT: FIELD has
   struct client_command_context's utf8 flag; NONE lacks it (then mailbox
   names are never sent as UTF-8 quoted strings).
   xaps-probe: FIELD NONE
   xaps-absent: NONE utf8 */
#include "imap-common.h"
#include "imap-commands.h"

bool probe(struct client_command_context *cmd);
bool probe(struct client_command_context *cmd)
{
#if defined(FIELD)
	return cmd->utf8;
#elif defined(NONE)
	return cmd->utf8 != 0;
#endif
}
