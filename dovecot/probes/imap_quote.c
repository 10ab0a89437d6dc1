/* imap_append_string(): FLAGS takes enum imap_quote_flags
   (IMAP_QUOTE_FLAG_UTF8 allows UTF-8 in a quoted string), PLAIN has no
   flags and writes a literal for anything not ASCII.
   xaps-probe: FLAGS PLAIN */
#include "lib.h"
#include "str.h"
#include "imap-quote.h"

void probe(string_t *dest);
void probe(string_t *dest)
{
#if defined(FLAGS)
	imap_append_string(dest, "INBOX", IMAP_QUOTE_FLAG_UTF8);
#elif defined(PLAIN)
	imap_append_string(dest, "INBOX");
#endif
}
