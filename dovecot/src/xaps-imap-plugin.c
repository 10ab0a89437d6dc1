/* IMAP side of the xaps plugin: advertises XAPPLEPUSHSERVICE after login and
   implements the command iOS Mail uses to register a device for push. The
   registration is forwarded to the xapsd daemon (POST /register) and the
   daemon's APNs topic is handed back to the device.

   The command does not block the imap process: it parks itself in
   CLIENT_COMMAND_STATE_WAIT_EXTERNAL while the HTTP request runs, and once
   the answer is in it switches to WAIT_OUTPUT so that Dovecot's own output
   handler resumes it at a point where writing to the client is safe. */

#include "imap-common.h"
#include "array.h"
#include "str.h"
#include "istream.h"
#include "ostream.h"
#include "ioloop.h"
#include "http-client.h"
#include "imap-arg.h"
#include "imap-quote.h"
#include "imap-utf7.h"
#include "imap-commands.h"
#include "imap-commands-util.h"
#include "mail-user.h"
#include "mail-namespace.h"
#include "mail-storage.h"
#include "module-dir.h"
#include "xaps-common.h"
#include "xaps-compat.h"

#define XAPS_COMMAND "XAPPLEPUSHSERVICE"
#define XAPS_APS_VERSION "2"
/* Real topics are about 60 bytes; anything this large is not a topic. */
#define XAPS_MAX_BODY_SIZE 4096
/* Longest daemon error text passed on to the IMAP client. */
#define XAPS_MAX_REASON_LEN 200

XAPS_EXPORT extern const char *xaps_imap_plugin_version;
XAPS_EXPORT extern const char xaps_imap_plugin_binary_dependency[];
XAPS_EXPORT void xaps_imap_plugin_init(struct module *module);
XAPS_EXPORT void xaps_imap_plugin_deinit(void);

const char *xaps_imap_plugin_version = DOVECOT_ABI_VERSION;
const char xaps_imap_plugin_binary_dependency[] = "imap";

/* Both are dictated by Dovecot's module API: the module handle is needed to
   ask whether a user has the plugin enabled, and the hook chain has to be
   restored at deinit. */
static struct module *xaps_imap_module;
static imap_client_created_func_t *next_hook_client_created;

struct xaps_register_args {
	const char *version;
	const char *account_id;
	const char *device_token;
	const char *subtopic;
	ARRAY_TYPE(const_string) mailboxes;
	bool have_mailboxes;
};

struct xaps_register {
	struct client_command_context *cmd;
	struct xaps_config conf;
	struct xaps_register_args args;
	const char *username;

	/* Held from submit until the command ends. */
	struct http_client *client;
	struct http_client_request *req;
	struct istream *payload;
	struct io *io;
	/* Bounds the whole exchange, the response body included. */
	struct timeout *to;
	string_t *body;

	/* Outcome, filled in once the HTTP exchange is over. */
	unsigned int status;
	const char *reason;
	bool body_too_large;
	bool starting;
	bool finished;
};

/* Dovecot passes literals with their length, and a NUL inside one would
   silently cut the C string short (a literal "INBOX\0x" would register
   "INBOX"), so such values are refused. */
#define XAPS_NUL_ERROR "NUL character in argument."
static bool xaps_arg_has_nul(const struct imap_arg *arg, const char *value)
{
	return strlen(value) != arg->str_len;
}

/* Parse "key value key value ..." in any order. Returns NULL on success or
   the message for the BAD reply. */
static const char *
xaps_parse_args(struct client_command_context *cmd,
		const struct imap_arg *args, struct xaps_register_args *ra)
{
	const struct imap_arg *list;
	const char *key, *value;

	i_zero(ra);
	p_array_init(&ra->mailboxes, cmd->pool, 4);

	if (IMAP_ARG_IS_EOL(args))
		return "Invalid arguments.";

	while (!IMAP_ARG_IS_EOL(args)) {
		if (!imap_arg_get_astring(&args[0], &key) ||
		    IMAP_ARG_IS_EOL(&args[1]))
			return "Invalid arguments.";
		if (xaps_arg_has_nul(&args[0], key))
			return XAPS_NUL_ERROR;

		if (strcasecmp(key, "mailboxes") == 0) {
			if (!imap_arg_get_list(&args[1], &list))
				return "Invalid arguments.";
			array_clear(&ra->mailboxes);
			ra->have_mailboxes = TRUE;
			for (; !IMAP_ARG_IS_EOL(list); list++) {
				if (!imap_arg_get_astring(list, &value) ||
				    *value == '\0')
					return "Registration failed.";
				if (xaps_arg_has_nul(list, value))
					return XAPS_NUL_ERROR;
				array_push_back(&ra->mailboxes, &value);
			}
		} else if (strcasecmp(key, "aps-version") == 0 ||
			   strcasecmp(key, "aps-account-id") == 0 ||
			   strcasecmp(key, "aps-device-token") == 0 ||
			   strcasecmp(key, "aps-subtopic") == 0) {
			if (!imap_arg_get_astring(&args[1], &value))
				return "Invalid arguments.";
			if (xaps_arg_has_nul(&args[1], value))
				return XAPS_NUL_ERROR;
			if (strcasecmp(key, "aps-version") == 0)
				ra->version = value;
			else if (strcasecmp(key, "aps-account-id") == 0)
				ra->account_id = value;
			else if (strcasecmp(key, "aps-device-token") == 0)
				ra->device_token = value;
			else
				ra->subtopic = value;
		}
		/* Anything else (iOS's "sender", future additions) is
		   skipped whatever its value looks like. */
		args += 2;
	}

	if (ra->version == NULL || strcmp(ra->version, XAPS_APS_VERSION) != 0)
		return "Unknown aps-version.";
	if (ra->account_id == NULL || *ra->account_id == '\0')
		return "Incomplete or empty aps-account-id parameter.";
	if (ra->device_token == NULL || *ra->device_token == '\0')
		return "Incomplete or empty aps-device-token parameter.";
	if (ra->subtopic == NULL || *ra->subtopic == '\0')
		return "Incomplete or empty aps-subtopic parameter.";
	if (!ra->have_mailboxes || array_count(&ra->mailboxes) == 0)
		return "Incomplete or empty mailboxes parameter.";
	return NULL;
}

/* The daemon gets mailbox names in modified UTF-7, as iOS sends them; a
   client that enabled UTF8=ACCEPT sends UTF-8 (kept as it is if it is not
   valid UTF-8: the JSON then carries U+FFFD and matches nothing). */
static const char *
xaps_mailbox_mutf7(const struct xaps_register *reg, const char *name)
{
	const char *mutf7;

	if (!xaps_cmd_utf8(reg->cmd) ||
	    t_imap_utf8_to_utf7(name, &mutf7) < 0)
		return name;
	return mutf7;
}

static string_t *xaps_register_json(const struct xaps_register *reg)
{
	const char *const *mailbox;
	string_t *json = t_str_new(256);
	bool first = TRUE;

	str_append(json, "{\"ApsAccountId\":");
	xaps_json_append_string(json, reg->args.account_id);
	str_append(json, ",\"ApsDeviceToken\":");
	xaps_json_append_string(json, reg->args.device_token);
	str_append(json, ",\"ApsSubtopic\":");
	xaps_json_append_string(json, reg->args.subtopic);
	str_append(json, ",\"Username\":");
	xaps_json_append_string(json, reg->username);
	str_append(json, ",\"Mailboxes\": [");
	array_foreach(&reg->args.mailboxes, mailbox) {
		if (!first)
			str_append_c(json, ',');
		first = FALSE;
		xaps_json_append_string(json, xaps_mailbox_mutf7(reg, *mailbox));
	}
	str_append(json, "]}");
	return json;
}

/* The HTTP exchange is over. Hand the command back to Dovecot's output
   handler, unless we are still inside the command function. */
static void xaps_register_done(struct xaps_register *reg)
{
	struct client_command_context *cmd = reg->cmd;

	io_remove(&reg->io);
	i_stream_unref(&reg->payload);
	timeout_remove(&reg->to);
	reg->finished = TRUE;
	if (reg->starting)
		return;

	cmd->state = CLIENT_COMMAND_STATE_WAIT_OUTPUT;
	o_stream_set_flush_pending(cmd->client->output, TRUE);
}

static void xaps_register_payload_input(struct xaps_register *reg)
{
	const unsigned char *data;
	size_t size;
	int ret;

	while ((ret = i_stream_read_more(reg->payload, &data, &size)) > 0) {
		if (str_len(reg->body) + size > XAPS_MAX_BODY_SIZE) {
			reg->body_too_large = TRUE;
			xaps_register_done(reg);
			return;
		}
		str_append_data(reg->body, data, size);
		i_stream_skip(reg->payload, size);
	}
	if (ret == 0)
		return;
	if (reg->payload->stream_errno != 0) {
		reg->status = HTTP_CLIENT_REQUEST_ERROR_CONNECTION_LOST;
		reg->reason = p_strdup_printf(reg->cmd->pool,
			"reading response failed: %s",
			i_stream_get_error(reg->payload));
	}
	xaps_register_done(reg);
}

/* The daemon did not finish its answer in time: headers that never came,
   or a body that trickles in. */
static void xaps_register_timeout(struct xaps_register *reg)
{
	if (reg->req != NULL)
		http_client_request_abort(&reg->req);
	reg->status = HTTP_CLIENT_REQUEST_ERROR_TIMED_OUT;
	reg->reason = p_strdup_printf(reg->cmd->pool,
		"no complete answer within %u ms", reg->conf.timeout_msecs);
	xaps_register_done(reg);
}

static void
xaps_register_response(const struct http_response *response,
		       struct xaps_register *reg)
{
	reg->req = NULL;
	reg->status = response->status;
	reg->reason = p_strdup(reg->cmd->pool, response->reason == NULL ? "" :
			       response->reason);

	if (response->payload == NULL) {
		xaps_register_done(reg);
		return;
	}
	/* The body may not have arrived completely yet; keep the stream and
	   read it as it comes. The HTTP client keeps the connection busy
	   until we let go of it. */
	i_stream_ref(response->payload);
	reg->payload = response->payload;
	reg->io = io_add_istream(reg->payload, xaps_register_payload_input,
				 reg);
	xaps_register_payload_input(reg);
}

static bool xaps_topic_is_valid(const string_t *body)
{
	const unsigned char *p = str_data(body);
	size_t i, size = str_len(body);

	if (size == 0)
		return FALSE;
	/* The topic goes into an IMAP quoted string unescaped, so only plain
	   printable ASCII without quoted-specials is acceptable. */
	for (i = 0; i < size; i++) {
		if (p[i] < 0x20 || p[i] >= 0x7f || p[i] == '"' || p[i] == '\\')
			return FALSE;
	}
	return TRUE;
}

static bool xaps_mailbox_exists(struct client_command_context *cmd,
				const char *name)
{
	struct mail_namespace *ns;
	struct mailbox *box;
	enum mailbox_existence existence;
	const char *error;
	int ret;

	/* Converts the name as the client sent it to the internal one. */
	ns = xaps_client_find_namespace(cmd, &name, &error);
	if (ns == NULL)
		return FALSE;
	box = mailbox_alloc(ns->list, name, 0);
	ret = mailbox_exists(box, TRUE, &existence);
	mailbox_free(&box);
	return ret == 0 && existence == MAILBOX_EXISTENCE_SELECT;
}

static void xaps_register_reply(struct xaps_register *reg)
{
	struct client_command_context *cmd = reg->cmd;
	struct client *client = cmd->client;
	const char *const *mailbox, *why;
	string_t *line;

	if (reg->status >= HTTP_RESPONSE_STATUS_INTERNAL) {
		e_error(client->event, "xaps: POST /register for user %s "
			"failed: %s", reg->username, reg->reason);
		why = reg->status == HTTP_CLIENT_REQUEST_ERROR_TIMED_OUT ?
			"push daemon timed out" : "push daemon unreachable";
	} else if (reg->status / 100 != 2) {
		const char *text = reg->body != NULL && str_len(reg->body) > 0 ?
			xaps_one_line(str_data(reg->body), str_len(reg->body),
				      XAPS_MAX_REASON_LEN) :
			xaps_one_line((const void *)reg->reason,
				      strlen(reg->reason), XAPS_MAX_REASON_LEN);

		e_error(client->event, "xaps: POST /register for user %s "
			"failed: %u %s", reg->username, reg->status, text);
		why = t_strdup_printf("%u %s", reg->status, text);
	} else if (reg->body_too_large || !xaps_topic_is_valid(reg->body)) {
		e_error(client->event, "xaps: POST /register for user %s: "
			"daemon returned an unusable topic (%zu bytes): %s",
			reg->username, str_len(reg->body),
			xaps_one_line(str_data(reg->body), str_len(reg->body),
				      XAPS_MAX_REASON_LEN));
		why = "invalid topic from push daemon";
	} else {
		why = NULL;
	}

	if (why != NULL) {
		client_send_tagline(cmd, t_strdup_printf(
			"NO "XAPS_COMMAND" registration failed: %s", why));
		return;
	}

	e_debug(client->event, "xaps: registered device for user %s, "
		"topic %s", reg->username, str_c(reg->body));

	if (reg->conf.mailbox_confirm) {
		array_foreach(&reg->args.mailboxes, mailbox) {
			if (!xaps_mailbox_exists(cmd, *mailbox))
				continue;
			line = t_str_new(64);
			str_append(line, "* "XAPS_COMMAND" mailbox ");
			xaps_imap_append_string(line, *mailbox, cmd);
			client_send_line(client, str_c(line));
		}
	}
	line = t_str_new(128);
	str_append(line, "* "XAPS_COMMAND" aps-version \""XAPS_APS_VERSION
		   "\" aps-topic \"");
	str_append_str(line, reg->body);
	str_append_c(line, '"');
	client_send_line(client, str_c(line));
	client_send_tagline(cmd, "OK "XAPS_COMMAND" completed.");
}

/* The command ends: nothing of the exchange may call back into it. */
static void xaps_register_release(struct xaps_register *reg)
{
	if (reg->req != NULL)
		http_client_request_abort(&reg->req);
	io_remove(&reg->io);
	i_stream_unref(&reg->payload);
	timeout_remove(&reg->to);
	if (reg->client != NULL) {
		xaps_http_client_unref();
		reg->client = NULL;
	}
}

static bool cmd_xapplepushservice_continue(struct client_command_context *cmd)
{
	struct xaps_register *reg = cmd->context;

	if (cmd->cancel) {
		/* Client went away (or the command was cancelled) while the
		   daemon was working. */
		xaps_register_release(reg);
		return TRUE;
	}
	if (!reg->finished)
		return FALSE;
	xaps_register_release(reg);
	xaps_register_reply(reg);
	return TRUE;
}

static bool cmd_xapplepushservice(struct client_command_context *cmd)
{
	struct client *client = cmd->client;
	const struct imap_arg *args;
	struct xaps_register *reg;
	struct http_client_request *req;
	const char *error;
	string_t *json;

	if (!client_read_args(cmd, 0, 0, &args))
		return FALSE;

	if (!mail_user_is_plugin_loaded(client->user, xaps_imap_module)) {
		client_send_command_error(cmd, "Unknown command.");
		return TRUE;
	}

	reg = p_new(cmd->pool, struct xaps_register, 1);
	reg->cmd = cmd;
	if ((error = xaps_parse_args(cmd, args, &reg->args)) != NULL) {
		client_send_command_error(cmd, error);
		return TRUE;
	}
	if (xaps_config_parse(client->user, cmd->pool, &reg->conf,
			      &error) < 0) {
		e_error(client->event, "xaps: %s", error);
		client_send_tagline(cmd, "NO "XAPS_COMMAND
				    " registration failed: not configured");
		return TRUE;
	}
	reg->username = p_strdup(cmd->pool,
				 xaps_username(client->user, &reg->conf));
	reg->body = str_new(cmd->pool, 128);

	json = xaps_register_json(reg);
	e_debug(client->event, "xaps: POST /register %s", str_c(json));
	reg->client = xaps_http_client_ref(client->user);
	req = xaps_http_post(reg->client, &reg->conf, "/register", json,
			     xaps_register_response, reg);
	reg->req = req;
	/* Our own timer, not the HTTP client's absolute timeout: once the
	   headers are in, this command reads the body itself, and the client
	   tearing the request down under that read (its timeout firing first)
	   would leave our io on a connection it reuses. */
	reg->to = timeout_add(reg->conf.timeout_msecs, xaps_register_timeout,
			      reg);

	cmd->context = reg;
	cmd->func = cmd_xapplepushservice_continue;
	cmd->state = CLIENT_COMMAND_STATE_WAIT_EXTERNAL;

	/* Should the HTTP client ever answer from within submit, the reply is
	   written right here instead of through the output handler. */
	reg->starting = TRUE;
	http_client_request_submit(req);
	reg->starting = FALSE;

	if (!reg->finished)
		return FALSE;
	xaps_register_release(reg);
	xaps_register_reply(reg);
	return TRUE;
}

static void xaps_imap_client_created(struct client **clientp)
{
	struct client *client = *clientp;

	if (mail_user_is_plugin_loaded(client->user, xaps_imap_module))
		client_add_capability(client, XAPS_COMMAND);

	if (next_hook_client_created != NULL)
		next_hook_client_created(clientp);
}

void xaps_imap_plugin_init(struct module *module)
{
	xaps_imap_module = module;
	command_register(XAPS_COMMAND, cmd_xapplepushservice, 0);
	next_hook_client_created =
		imap_client_created_hook_set(xaps_imap_client_created);
}

void xaps_imap_plugin_deinit(void)
{
	command_unregister(XAPS_COMMAND);
	imap_client_created_hook_set(next_hook_client_created);
	xaps_http_client_deinit();
}
