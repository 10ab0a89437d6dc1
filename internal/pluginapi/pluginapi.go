// Package pluginapi is the HTTP interface the Dovecot plugin talks to:
// POST /register and POST /notify with the JSON bodies and status codes of
// the existing xapsd (docs/protocol.md#http-api), plus GET /healthz for supervisors.
//
// Everything the plugin sends is checked before anything changes: a bad
// request gets a 4xx with a one-line reason and leaves the registry as it
// was. /register answers only once the registration is durable (on disk,
// or committed in PostgreSQL); /notify answers before any push is sent, so
// Dovecot never waits on Apple.
//
// Each handler decides its whole answer in one value (the status, the
// reason the client may read, the cause and level of the log line), and
// one function writes it and logs it.
package pluginapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/logging"
	"github.com/xapsd/xapsd/internal/notify"
	"github.com/xapsd/xapsd/internal/registry"
)

// Subtopic is the only value iOS Mail sends, and the only one accepted.
const Subtopic = "com.apple.mobilemail"

// Limits on what a request may hold. Real requests are far below them.
const (
	MaxBody          = 64 << 10
	MaxMailboxes     = 1000
	MaxMailboxLen    = 1024
	MaxMailboxBytes  = 32 << 10 // all of one registration's names together
	MaxUsernameLen   = 512      // for /register and /notify alike
	MaxAccountIDLen  = 256
	MinTokenLen      = 16
	MaxTokenLen      = 400
	MaxEvents        = 64
	registerDeadline = 30 * time.Second
)

// maxNotifyMailboxLen bounds /notify's Mailbox, which may be longer than
// any registered name (it then matches none).
const maxNotifyMailboxLen = MaxUsernameLen + MaxMailboxLen

// Registrar stores registrations durably (registry.Registry).
type Registrar interface {
	Register(ctx context.Context, reg registry.Registration) error
}

// Notifier handles mailbox events (notify.Service).
type Notifier interface {
	Notify(user, mailbox string, events []string) notify.Status
}

// Options wires the handler.
type Options struct {
	Registrar Registrar
	Notifier  Notifier
	// Topic returns the APNs topic devices must listen to, or an error
	// saying why no push credential is usable (then /register is 503).
	Topic func() (string, error)
	// Health reports problems for /healthz; nil error means healthy.
	Health func() error
	Log    logrus.FieldLogger
	// Observe, when set, sees every request's path, status and duration.
	Observe func(path string, status int, d time.Duration)
	// Secret, when not empty, must come with every /register and
	// /notify as "Authorization: Bearer <secret>" (pluginSecretFile).
	Secret []byte
	// Authenticated, when set, sees each /register and /notify that
	// passed the secret check (every one, without a secret), before its
	// body is read: its connection is the plugin's (connlimit.Trust).
	Authenticated func(*http.Request)
}

type handler struct {
	Options
	// bodies hold request bodies while they are decoded; MaxBody bounds
	// their size.
	bodies sync.Pool
	// secretSum is the SHA-256 of Secret: comparing digests of equal
	// length keeps the comparison's time from telling the secret's
	// length or how much of it a guess got right.
	secretSum [sha256.Size]byte
	// Unix seconds of the last log line about refused requests; they
	// can come by the thousand.
	lastAuthLog, lastFullLog atomic.Int64
}

// NewHandler returns the plugin API.
func NewHandler(o Options) http.Handler {
	if o.Log == nil {
		l := logrus.New()
		l.SetLevel(logrus.PanicLevel)
		o.Log = l
	}
	h := &handler{Options: o, bodies: sync.Pool{New: func() any { return new(bytes.Buffer) }}}
	if len(o.Secret) > 0 {
		h.secretSum = sha256.Sum256(o.Secret)
	}
	return h
}

// authorized checks the shared secret, when there is one. The scheme is
// case-insensitive (RFC 9110 §11.1).
func (h *handler) authorized(r *http.Request) bool {
	if len(h.Secret) == 0 {
		return true
	}
	auth := r.Header.Get("Authorization")
	if len(auth) < len("Bearer ") || !strings.EqualFold(auth[:len("Bearer ")], "Bearer ") {
		return false
	}
	sum := sha256.Sum256([]byte(auth[len("Bearer "):]))
	return subtle.ConstantTimeCompare(sum[:], h.secretSum[:]) == 1
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	body := &bodyReader{ReadCloser: r.Body, done: r.Body == nil || r.Body == http.NoBody}
	r.Body = body
	h.reply(sw, h.route(sw, r))
	if !body.done {
		// Answered without reading the whole body (a refusal, /healthz):
		// the server would otherwise read what is left before the next
		// request, for as long as the client takes to send it, or never
		// send it. Cutting the read closes the connection instead.
		http.NewResponseController(w).SetReadDeadline(time.Now())
	}
	if h.Observe != nil {
		h.Observe(r.URL.Path, sw.status, time.Since(start))
	}
}

// bodyReader notes whether the request's body was read to its end (a
// request without one counts as read).
type bodyReader struct {
	io.ReadCloser
	done bool
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		b.done = true
	}
	return n, err
}

// route finds the request's handler and checks what every request must
// pass first: its method and, for the plugin's requests, the secret. w
// only bounds the body's size (http.MaxBytesReader); nothing is written
// before reply.
func (h *handler) route(w http.ResponseWriter, r *http.Request) answer {
	var allow string
	var serve func(*http.Request) answer
	switch r.URL.Path {
	case "/register":
		allow, serve = http.MethodPost, h.register
	case "/notify":
		allow, serve = http.MethodPost, h.notify
	case "/healthz":
		allow, serve = http.MethodGet, h.healthz
	default:
		return answer{status: http.StatusNotFound, text: "404 page not found"}
	}
	if r.Method != allow && !(allow == http.MethodGet && r.Method == http.MethodHead) {
		return answer{status: http.StatusMethodNotAllowed, text: "Method Not Allowed", header: http.Header{"Allow": {allow}}}
	}
	if allow == http.MethodPost && !h.authorized(r) {
		// Right after the headers, and the body is never read: a client
		// without the secret gets nothing of the server, not even the
		// time it would take to send its body. Its connection is closed
		// (ServeHTTP cuts the body's read), so it has to connect again,
		// at the back of the queue.
		return answer{status: http.StatusUnauthorized, text: "unauthorized: the request lacks the secret of pluginSecretFile",
			header: http.Header{"Www-Authenticate": {`Bearer realm="xapsd"`}, "Connection": {"close"}},
			log: logLine{level: logrus.WarnLevel, msg: "refused requests without the plugin's secret (pluginSecretFile); logged at most once a minute",
				fields: logrus.Fields{"remote": r.RemoteAddr}, everyMinute: &h.lastAuthLog}}
	}
	if allow == http.MethodPost {
		if h.Authenticated != nil {
			h.Authenticated(r)
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
	}
	return serve(r)
}

// answer is what a request gets and what the log says of it: the
// handlers decide it, reply writes and logs it, in one place.
type answer struct {
	status int
	// text is the body: a refusal's reason (one line, which the plugin
	// passes on to the IMAP client, so nothing of the server's insides),
	// or a success's content (the topic, "ok").
	text   string
	header http.Header // more headers, for the few answers that have them
	log    logLine
	// gone: the client left before its answer; nothing is written.
	gone bool
}

// logLine is the log's side of an answer; one without msg is not logged.
type logLine struct {
	level logrus.Level
	msg   string
	cause error // why, for the admin: paths, errno, the database's error
	// fields of the line; lazy ones are built only when the line is
	// logged, for lines at debug on the busy path.
	fields logrus.Fields
	lazy   lazyFields
	// everyMinute, when set, lets one such line through a minute: a
	// refusal can come by the thousand.
	everyMinute *atomic.Int64
}

// lazyFields builds the fields of a line that may not be logged.
type lazyFields interface {
	fields(l logrus.FieldLogger) logrus.Fields
}

// reply writes the answer and logs its line.
func (h *handler) reply(w http.ResponseWriter, a answer) {
	h.record(a.log)
	for k, v := range a.header {
		w.Header()[k] = v
	}
	switch {
	case a.gone:
	case a.status >= http.StatusBadRequest:
		fail(w, a.status, a.text)
	case a.text != "":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(a.status)
		w.Write([]byte(a.text))
	default:
		w.WriteHeader(a.status)
	}
}

// record logs an answer's line.
func (h *handler) record(l logLine) {
	if l.msg == "" || (l.level >= logrus.DebugLevel && !logging.Verbose(h.Log)) ||
		(l.everyMinute != nil && !logging.EveryMinute(l.everyMinute)) {
		return
	}
	fields := l.fields
	if l.lazy != nil {
		fields = l.lazy.fields(h.Log)
	}
	e := h.Log.WithFields(fields)
	if l.cause != nil {
		e = e.WithError(l.cause)
	}
	e.Log(l.level, l.msg)
}

// registerRequest is the plugin's /register body (docs/protocol.md#register). Pointers
// tell a missing key from an empty value in error messages.
type registerRequest struct {
	ApsAccountID   *string  `json:"ApsAccountId"`
	ApsDeviceToken *string  `json:"ApsDeviceToken"`
	ApsSubtopic    *string  `json:"ApsSubtopic"`
	Username       *string  `json:"Username"`
	Mailboxes      []string `json:"Mailboxes"`
}

// notifyRequest is the plugin's /notify body (docs/protocol.md#notify).
type notifyRequest struct {
	Username *string  `json:"Username"`
	Mailbox  *string  `json:"Mailbox"`
	Events   []string `json:"Events"`
}

// decode reads one JSON value from a size-capped body. Keys match
// case-insensitively and unknown keys are ignored, as encoding/json did
// for the old daemon.
//
// The usual body, one well-formed value, is read into a pooled buffer and
// unmarshalled (the plugin's /notify body by decodeNotifyBody): a json.Decoder per request was a seventh of the daemon's
// allocations under load. Anything else (trailing data, a syntax or type
// error, a body over the cap) is decoded from the same bytes the way it
// always was, so what is accepted and every error message stay the same.
func (h *handler) decode(r *http.Request, v any) (int, error) {
	body := r.Body // bounded by route
	buf := h.bodies.Get().(*bytes.Buffer)
	defer h.bodies.Put(buf)
	buf.Reset()
	_, rerr := buf.ReadFrom(body)
	// encoding/json replaces invalid UTF-8 with U+FFFD before any check
	// here could see it; JSON text must be UTF-8 (RFC 8259), so refuse it
	// whole.
	if rerr == nil && !utf8.Valid(buf.Bytes()) {
		return http.StatusBadRequest, errors.New("body is not valid UTF-8")
	}
	if req, ok := v.(*notifyRequest); ok && rerr == nil && decodeNotifyBody(buf.Bytes(), req) {
		return 0, nil
	}
	// Unmarshal checks the whole input before it stores anything, so a
	// body it refuses for its syntax leaves v untouched for the decoder.
	if rerr == nil && json.Unmarshal(buf.Bytes(), v) == nil {
		return 0, nil
	}
	return decodeFailure(json.NewDecoder(io.MultiReader(bytes.NewReader(buf.Bytes()), body)).Decode(v))
}

// decodeFailure turns a decoding error into the status and the reason
// the plugin is told; nil stays nil.
func decodeFailure(err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var tooBig *http.MaxBytesError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, fmt.Errorf("body larger than %d bytes", MaxBody)
	case errors.As(err, &typeErr):
		return http.StatusBadRequest, fmt.Errorf("%s: wrong type (%s)", typeErr.Field, typeErr.Value)
	default:
		return http.StatusBadRequest, fmt.Errorf("malformed JSON: %v", err)
	}
}

// fail writes a refusal: the status and one line of reason.
func fail(w http.ResponseWriter, status int, msg string) {
	// One line, no quoting tricks: the plugin shows it to the IMAP client.
	msg = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' {
			return ' '
		}
		return r
	}, msg)
	http.Error(w, msg, status)
}

func (h *handler) register(r *http.Request) answer {
	var req registerRequest
	if status, err := h.decode(r, &req); err != nil {
		return answer{status: status, text: "invalid registration: " + err.Error(),
			log: logLine{level: logrus.DebugLevel, msg: "bad /register request", cause: err}}
	}
	reg, problems := validateRegister(&req)
	if len(problems) > 0 {
		msg := "invalid registration: " + strings.Join(problems, "; ")
		return answer{status: http.StatusBadRequest, text: msg, log: logLine{level: logrus.WarnLevel, msg: msg, fields: logrus.Fields{"user": reg.User}}}
	}
	topic, err := h.Topic()
	if err != nil {
		return answer{status: http.StatusServiceUnavailable, text: "no usable push credential on the server: " + publicReason(err),
			log: logLine{level: logrus.WarnLevel, msg: "refusing a registration: no usable push credential", cause: err}}
	}
	ctx, cancel := context.WithTimeout(r.Context(), registerDeadline)
	defer cancel()
	if err := h.Registrar.Register(ctx, reg); err != nil {
		return h.notStored(r, reg.User, err)
	}
	return answer{status: http.StatusOK, text: topic, // the topic only, no newline: the plugin uses the body as it is
		log: logLine{level: logrus.DebugLevel, msg: "registered", lazy: (*registered)(&reg)}}
}

// notStored is the answer to a registration the registry did not store.
// Which error it was decides the status; the reason the client gets says
// what it may do, the log the cause.
func (h *handler) notStored(r *http.Request, user string, err error) answer {
	who := logrus.Fields{"user": user}
	switch {
	case errors.Is(err, registry.ErrFull):
		return answer{status: http.StatusServiceUnavailable, text: "registry full: the server takes no new devices now",
			log: logLine{level: logrus.WarnLevel, msg: "refusing new registrations: maxRegistrations reached; logged at most once a minute",
				fields: who, everyMinute: &h.lastFullLog}}
	case errors.Is(err, registry.ErrUnconfirmed):
		// The registry logs it, and reads the user again until the
		// database says whether it was stored.
		return answer{status: http.StatusServiceUnavailable,
			text: "registry unavailable: the database did not confirm the registration in time; it may still be stored"}
	case errors.Is(err, registry.ErrUnavailable):
		return answer{status: http.StatusServiceUnavailable, text: "registry unavailable: the server cannot store registrations right now",
			log: logLine{level: logrus.ErrorLevel, msg: "registration not stored: the registry database cannot be reached", cause: err, fields: who}}
	case r.Context().Err() != nil:
		// Dovecot gave up on the answer; the registration is in the
		// journal's queue and is stored unless the write fails, which
		// the registry logs itself.
		return answer{gone: true,
			log: logLine{level: logrus.InfoLevel, msg: "the plugin closed the connection before the registration was confirmed", fields: who}}
	}
	// The reason (paths, errno) is for the admin's log; the plugin
	// passes the body on to the IMAP client.
	return answer{status: http.StatusInternalServerError, text: "registration not stored: the server could not save it",
		log: logLine{level: logrus.ErrorLevel, msg: "registration not stored", cause: err, fields: who}}
}

// registered is a stored registration, for its debug line.
type registered registry.Registration

func (reg *registered) fields(l logrus.FieldLogger) logrus.Fields {
	return logrus.Fields{
		"user":      reg.User,
		"account":   logging.Mask(l, reg.AccountID),
		"token":     logging.Mask(l, reg.DeviceToken),
		"mailboxes": len(reg.Mailboxes),
	}
}

func validateRegister(req *registerRequest) (registry.Registration, []string) {
	var problems []string
	need := func(name string, v *string, max int) string {
		switch {
		case v == nil:
			problems = append(problems, name+": missing")
		case *v == "":
			problems = append(problems, name+": empty")
		case len(*v) > max:
			problems = append(problems, fmt.Sprintf("%s: longer than %d bytes", name, max))
		case !printableName(*v):
			problems = append(problems, name+": not printable UTF-8")
		default:
			return *v
		}
		return ""
	}
	reg := registry.Registration{}
	reg.AccountID = need("ApsAccountId", req.ApsAccountID, MaxAccountIDLen)
	reg.DeviceToken = need("ApsDeviceToken", req.ApsDeviceToken, MaxTokenLen)
	if t := reg.DeviceToken; t != "" {
		if _, err := hex.DecodeString(t); err != nil || len(t) < MinTokenLen {
			problems = append(problems, "ApsDeviceToken: not a hex device token")
		}
		// One device, one spelling: the same token in lower case must
		// not become a second registration and a second push.
		reg.DeviceToken = registry.FoldToken(t)
	}
	if sub := need("ApsSubtopic", req.ApsSubtopic, 64); sub != "" && sub != Subtopic {
		problems = append(problems, "ApsSubtopic: must be "+Subtopic)
	}
	reg.User = registry.FoldUser(need("Username", req.Username, MaxUsernameLen))
	switch {
	case len(req.Mailboxes) == 0:
		problems = append(problems, "Mailboxes: missing or empty")
	case len(req.Mailboxes) > MaxMailboxes:
		problems = append(problems, fmt.Sprintf("Mailboxes: more than %d", MaxMailboxes))
	case totalLen(req.Mailboxes) > MaxMailboxBytes:
		// Every distinct list is kept in memory for as long as a device
		// uses it: the limit bounds what one registration can cost.
		problems = append(problems, fmt.Sprintf("Mailboxes: more than %d bytes of names in total", MaxMailboxBytes))
	default:
		seen := make(map[string]bool, len(req.Mailboxes))
		for _, m := range req.Mailboxes {
			if m == "" || len(m) > MaxMailboxLen || !printable(m) {
				problems = append(problems, "Mailboxes: an empty, overlong or unprintable name")
				break
			}
			if !seen[m] {
				seen[m] = true
				reg.Mailboxes = append(reg.Mailboxes, m)
			}
		}
	}
	return reg, problems
}

func totalLen(names []string) int {
	n := 0
	for _, s := range names {
		n += len(s)
	}
	return n
}

// printable refuses what cannot be shown as it is: control characters
// (C0, DEL, and C1 such as U+0085 and U+009B, which a terminal may obey as
// a newline or the start of an escape sequence), the line and paragraph
// separators U+2028 and U+2029, and U+FFFD, which is what encoding/json
// makes of an escaped lone surrogate ("\ud800"). Mailbox names keep
// Unicode format characters: the joiners in emoji and in some scripts are
// part of real folder names (the admin commands show them escaped).
func printable(s string) bool { return printableText(s, false) }

// printableName is printable without Unicode format characters either
// (bidirectional overrides such as U+202E, zero-width characters, the
// byte-order mark): for user names, account ids and event names, which
// an admin reads, compares and types.
func printableName(s string) bool { return printableText(s, true) }

func printableText(s string, noFormat bool) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return false
		} else if c >= utf8.RuneSelf {
			for _, r := range s[i:] {
				if unicode.In(r, unicode.Cc, unicode.Zl, unicode.Zp) || r == utf8.RuneError || noFormat && unicode.Is(unicode.Cf, r) {
					return false
				}
			}
			return true
		}
	}
	return true
}

func (h *handler) notify(r *http.Request) answer {
	var req notifyRequest
	if status, err := h.decode(r, &req); err != nil {
		return answer{status: status, text: "invalid notification: " + err.Error(),
			log: logLine{level: logrus.DebugLevel, msg: "bad /notify request", cause: err}}
	}
	var problems []string
	for _, f := range []struct {
		name string
		v    *string
		max  int
		ok   func(string) bool
	}{{"Username", req.Username, MaxUsernameLen, printableName}, {"Mailbox", req.Mailbox, maxNotifyMailboxLen, printable}} {
		switch {
		case f.v == nil || *f.v == "":
			problems = append(problems, f.name+": missing or empty")
		case len(*f.v) > f.max || !f.ok(*f.v):
			problems = append(problems, f.name+": overlong or unprintable")
		}
	}
	switch {
	case len(req.Events) == 0:
		// Dovecot omits Events when it recorded none (docs/protocol.md#notify).
		problems = append(problems, "Events: missing or empty")
	case len(req.Events) > MaxEvents:
		problems = append(problems, fmt.Sprintf("Events: more than %d", MaxEvents))
	default:
		for _, e := range req.Events {
			if e == "" || len(e) > 64 || !printableName(e) {
				problems = append(problems, "Events: an empty, overlong or unprintable event name")
				break
			}
		}
	}
	if len(problems) > 0 {
		msg := "invalid notification: " + strings.Join(problems, "; ")
		return answer{status: http.StatusBadRequest, text: msg, log: logLine{level: logrus.DebugLevel, msg: msg}}
	}
	st := h.Notifier.Notify(registry.FoldUser(*req.Username), *req.Mailbox, req.Events)
	status, msg := http.StatusOK, "notify"
	switch st {
	case notify.UnknownUser:
		// Normal for users without Apple devices: not a warning (old
		// daemon issue #9).
		status, msg = http.StatusNotFound, "notify: no registration for the user"
	case notify.NoMailbox:
		status, msg = http.StatusNoContent, "notify: no device registered for the mailbox"
	}
	// The fields are lazy: building them costs allocations on every
	// /notify even when the line is dropped.
	return answer{status: status, log: logLine{level: logrus.DebugLevel, msg: msg, lazy: &req}}
}

func (req *notifyRequest) fields(logrus.FieldLogger) logrus.Fields {
	return logrus.Fields{"user": registry.FoldUser(*req.Username), "mailbox": *req.Mailbox, "events": req.Events}
}

func (h *handler) healthz(*http.Request) answer {
	if h.Health != nil {
		if err := h.Health(); err != nil {
			return answer{status: http.StatusServiceUnavailable, text: err.Error()}
		}
	}
	return answer{status: http.StatusOK, text: "ok\n"}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// serverPath is an absolute path in an error message: a slash at the
// start or after a space, quote or bracket (not the "//" of a URL).
var serverPath = regexp.MustCompile(`(^|[\s"'(=])/[^\s:"'()]+`)

// errnoWords says in words what the system's error texts say, for the
// ones a credential file gives.
var errnoWords = strings.NewReplacer(
	": "+syscall.ENOENT.Error(), ": missing",
	": "+syscall.EACCES.Error(), ": not readable by xapsd",
	": "+syscall.EISDIR.Error(), ": a folder, not a file",
)

// publicReason is err for a /register refusal, which reaches the IMAP
// client and so the phone's user: every absolute path shortened to its
// last element and the system's error texts put in words. "certificate
// push.pem has expired" tells them (and the admin they call) what is
// wrong; the server's folders and errno stay in the log.
func publicReason(err error) string {
	msg := serverPath.ReplaceAllStringFunc(err.Error(), func(m string) string {
		lead := ""
		if m[0] != '/' {
			lead, m = m[:1], m[1:]
		}
		return lead + path.Base(m)
	})
	return errnoWords.Replace(msg)
}
