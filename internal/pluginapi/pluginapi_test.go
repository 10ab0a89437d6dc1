package pluginapi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/xapsd/xapsd/internal/logging"
	"github.com/xapsd/xapsd/internal/notify"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/registry/registrytest"
)

const (
	topic = "com.apple.mail.XServer.01234567-89ab-cdef-0123-456789abcdef"
	tok   = "2918390218931890821908309283098109381029309829018310983092892829"
	acc   = "0715A26B-CA09-4730-A419-793000CA982E"
	// Exactly what the stock plugin sends, space after the colon included.
	pluginRegister = `{"ApsAccountId":"` + acc + `","ApsDeviceToken":"` + tok + `","ApsSubtopic":"com.apple.mobilemail","Username":"Alice@Example.com","Mailboxes": ["INBOX","Notes"]}`
	pluginNotify   = `{"Username":"Alice@Example.com","Mailbox":"INBOX","Events": ["MessageNew"]}`
)

type fakeNotifier struct {
	status notify.Status
	calls  []string
}

func (f *fakeNotifier) Notify(user, mailbox string, events []string) notify.Status {
	f.calls = append(f.calls, user+"|"+mailbox+"|"+strings.Join(events, ","))
	return f.status
}

type env struct {
	srv   *httptest.Server
	reg   *registry.Registry
	notif *fakeNotifier
	topic func() (string, error)
}

func newEnv(t *testing.T) *env {
	t.Helper()
	r := registrytest.Open(t, registrytest.Defaults())
	e := &env{reg: r, notif: &fakeNotifier{}}
	e.topic = func() (string, error) { return topic, nil }
	h := NewHandler(Options{Registrar: r, Notifier: e.notif, Topic: func() (string, error) { return e.topic() }})
	e.srv = httptest.NewServer(h)
	t.Cleanup(func() { e.srv.Close(); r.Close() })
	return e
}

func (e *env) do(t *testing.T, method, path, body string) (int, string, http.Header) {
	t.Helper()
	return e.doAuth(t, method, path, body, "")
}

// doAuth is do with an Authorization header, unless auth is "".
func (e *env) doAuth(t *testing.T, method, path, body, auth string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func TestRegisterAnswersTopicOnlyAndStores(t *testing.T) {
	e := newEnv(t)
	status, body, _ := e.do(t, "POST", "/register", pluginRegister)
	if status != 200 || body != topic {
		t.Fatalf("register = %d %q, want 200 and the bare topic", status, body)
	}
	got := e.reg.List("alice@example.com")
	if len(got) != 1 || got[0].AccountID != acc || got[0].DeviceToken != tok || !slices.Equal(got[0].Mailboxes, []string{"INBOX", "Notes"}) {
		t.Fatalf("stored %+v", got)
	}
}

func TestRegisterKeysAreCaseInsensitive(t *testing.T) {
	e := newEnv(t)
	body := strings.NewReplacer("ApsAccountId", "apsaccountid", "Username", "USERNAME", "Mailboxes", "mailboxes").Replace(pluginRegister)
	if status, _, _ := e.do(t, "POST", "/register", body); status != 200 {
		t.Fatalf("status %d", status)
	}
	if len(e.reg.List("")) != 1 {
		t.Fatal("not stored")
	}
}

func TestBadRegistrationsChangeNothing(t *testing.T) {
	replace := func(old, new string) string { return strings.Replace(pluginRegister, old, new, 1) }
	cases := []struct {
		name, body string
		status     int
		reason     string
	}{
		{"malformed", `{"ApsAccountId":`, 400, "malformed JSON"},
		{"not an object", `[1,2]`, 400, "wrong type"},
		{"number for string", replace(`"Username":"Alice@Example.com"`, `"Username":42`), 400, "Username"},
		{"string for list", replace(`["INBOX","Notes"]`, `"INBOX"`), 400, "Mailboxes"},
		{"missing account", replace(`"ApsAccountId":"`+acc+`",`, ``), 400, "ApsAccountId: missing"},
		{"empty token", replace(tok, ""), 400, "ApsDeviceToken: empty"},
		{"token not hex", replace(tok, strings.Repeat("zz", 32)), 400, "not a hex device token"},
		{"token too short", replace(tok, "abcd"), 400, "not a hex device token"},
		{"bad subtopic", replace("com.apple.mobilemail", "com.example.app"), 400, "ApsSubtopic"},
		{"empty subtopic", replace("com.apple.mobilemail", ""), 400, "ApsSubtopic"},
		{"empty username", replace("Alice@Example.com", ""), 400, "Username: empty"},
		{"control char", replace("Alice@Example.com", `Ali\u0001ce`), 400, "Username: not printable"},
		{"no mailboxes", replace(`["INBOX","Notes"]`, `[]`), 400, "Mailboxes: missing or empty"},
		{"empty mailbox name", replace(`["INBOX","Notes"]`, `["INBOX",""]`), 400, "Mailboxes"},
		{"too many mailboxes", replace(`["INBOX","Notes"]`, `[`+strings.Repeat(`"a",`, MaxMailboxes)+`"b"]`), 400, "Mailboxes: more than"},
		{"too many mailbox bytes", replace(`["INBOX","Notes"]`, `[`+strings.Repeat(`"`+strings.Repeat("m", 40)+`",`, MaxMailboxBytes/40+1)+`"b"]`), 400, "bytes of names in total"},
		{"too big", replace(`"Notes"`, `"`+strings.Repeat("x", MaxBody)+`"`), 413, "larger than"},
		{"all wrong at once", `{}`, 400, "ApsAccountId: missing; ApsDeviceToken: missing; ApsSubtopic: missing; Username: missing; Mailboxes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			status, body, _ := e.do(t, "POST", "/register", c.body)
			if status != c.status || !strings.Contains(body, c.reason) {
				t.Errorf("= %d %q, want %d containing %q", status, body, c.status, c.reason)
			}
			if strings.Count(strings.TrimSuffix(body, "\n"), "\n") != 0 {
				t.Errorf("reason is not one line: %q", body)
			}
			if n := len(e.reg.List("")); n != 0 {
				t.Errorf("bad request stored %d registrations", n)
			}
		})
	}
}

func TestRegisterWithoutCredentialIs503(t *testing.T) {
	e := newEnv(t)
	e.topic = func() (string, error) { return "", errors.New("certificate /etc/xapsd/push.pem expired") }
	status, body, _ := e.do(t, "POST", "/register", pluginRegister)
	// The plugin hands the body to the IMAP client: the reason, but no
	// server path (that goes to the log).
	if status != 503 || !strings.Contains(body, "no usable push credential") || !strings.Contains(body, "push.pem expired") || strings.Contains(body, "/etc/xapsd") {
		t.Errorf("= %d %q", status, body)
	}
	if len(e.reg.List("")) != 0 {
		t.Error("stored a registration it could not serve")
	}
}

type failingRegistrar struct{}

func (failingRegistrar) Register(context.Context, registry.Registration) error {
	return &os.PathError{Op: "write", Path: "/var/lib/xapsd/database.json.journal.00000000000000000001-1", Err: syscall.ENOSPC}
}

// A 500 says the registration was not stored, and nothing about the
// server's files: the path and errno go to the log only.
func TestRegisterStorageFailureIs500WithoutServerDetails(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	srv := httptest.NewServer(NewHandler(Options{Registrar: failingRegistrar{}, Notifier: &fakeNotifier{},
		Topic: func() (string, error) { return topic, nil }, Log: log}))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/register", "application/json", strings.NewReader(pluginRegister))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 500 || !strings.Contains(string(b), "registration not stored") {
		t.Errorf("= %d %q", resp.StatusCode, b)
	}
	for _, leak := range []string{"/var/lib", "journal", "no space", "ENOSPC"} {
		if strings.Contains(string(b), leak) {
			t.Errorf("body %q shows %q to the plugin", b, leak)
		}
	}
	if e := hook.LastEntry(); e == nil || e.Level != logrus.ErrorLevel || !strings.Contains(fmt.Sprint(e.Data[logrus.ErrorKey]), "no space left") {
		t.Errorf("the log did not get the reason: %+v", e)
	}
}

// blockingRegistrar stands for a journal write that is still running
// when the client goes away.
type blockingRegistrar struct{ entered chan struct{} }

func (b blockingRegistrar) Register(ctx context.Context, _ registry.Registration) error {
	close(b.entered)
	<-ctx.Done()
	return ctx.Err()
}

// A plugin that closes the connection while its registration is being
// written has not lost it: no error-level "registration not stored".
func TestClientGoneDuringWriteIsNotAnError(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	reg := blockingRegistrar{entered: make(chan struct{})}
	h := NewHandler(Options{Registrar: reg, Notifier: &fakeNotifier{}, Topic: func() (string, error) { return topic, nil }, Log: log})
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequest(http.MethodPost, "/register", strings.NewReader(pluginRegister)).WithContext(ctx)
	done := make(chan struct{})
	go func() { h.ServeHTTP(httptest.NewRecorder(), req); close(done) }()
	<-reg.entered
	cancel()
	<-done
	for _, e := range hook.AllEntries() {
		if e.Level <= logrus.ErrorLevel {
			t.Errorf("logged at %s: %s", e.Level, e.Message)
		}
	}
}

func TestInvalidUTF8IsRefused(t *testing.T) {
	for name, body := range map[string]string{
		// Raw bytes that are not UTF-8: encoding/json would quietly
		// turn them into U+FFFD.
		"raw":       strings.Replace(pluginRegister, "Alice", "Al\xffice", 1),
		"raw-mbox":  strings.Replace(pluginRegister, `"Notes"`, "\"No\xc3tes\"", 1),
		"surrogate": strings.Replace(pluginRegister, "Alice", `Al\ud800ice`, 1),
	} {
		e := newEnv(t)
		status, reason, _ := e.do(t, "POST", "/register", body)
		if status != 400 {
			t.Errorf("%s: = %d %q, want 400", name, status, reason)
		}
		if n := len(e.reg.List("")); n != 0 {
			t.Errorf("%s: stored %d registrations", name, n)
		}
	}
	e := newEnv(t)
	if status, reason, _ := e.do(t, "POST", "/notify", strings.Replace(pluginNotify, "Alice", "Al\xffice", 1)); status != 400 {
		t.Errorf("notify with invalid UTF-8 = %d %q", status, reason)
	}
}

// User names fold as Dovecot folds them: ASCII letters only.
func TestUserNamesFoldASCIIOnly(t *testing.T) {
	e := newEnv(t)
	kelvin := strings.Replace(pluginRegister, "Alice@Example.com", "\u212Aim@Example.com", 1)
	if status, body, _ := e.do(t, "POST", "/register", kelvin); status != 200 {
		t.Fatalf("register = %d %q", status, body)
	}
	if got := e.reg.List(""); len(got) != 1 || got[0].User != "\u212aim@example.com" {
		t.Fatalf("stored %+v, want the Kelvin sign kept and only ASCII lower-cased", got)
	}
	if e.reg.Lookup("kim@example.com", "INBOX", false).KnownUser {
		t.Error("a Kelvin sign was filed under k")
	}
	e.do(t, "POST", "/notify", strings.Replace(pluginNotify, "Alice@Example.com", "\u212AIM@EXAMPLE.COM", 1))
	if want := "\u212aim@example.com|INBOX|MessageNew"; !slices.Equal(e.notif.calls, []string{want}) {
		t.Errorf("notifier saw %q, want %q", e.notif.calls, want)
	}
}

func TestNotifyStatusFollowsWhatTheEventWoke(t *testing.T) {
	for st, want := range map[notify.Status]int{notify.Pushed: 200, notify.Ignored: 200, notify.NoMailbox: 204, notify.UnknownUser: 404} {
		e := newEnv(t)
		e.notif.status = st
		status, _, _ := e.do(t, "POST", "/notify", pluginNotify)
		if status != want {
			t.Errorf("status for %v = %d, want %d", st, status, want)
		}
		if !slices.Equal(e.notif.calls, []string{"alice@example.com|INBOX|MessageNew"}) {
			t.Errorf("notifier saw %v", e.notif.calls)
		}
	}
}

func TestBadNotificationsAre400AndReachNoOne(t *testing.T) {
	cases := map[string]string{
		"malformed":       `{"Username":`,
		"no events key":   `{"Username":"a","Mailbox":"INBOX"}`,
		"empty events":    `{"Username":"a","Mailbox":"INBOX","Events": []}`,
		"no user":         `{"Mailbox":"INBOX","Events": ["MessageNew"]}`,
		"empty mailbox":   `{"Username":"a","Mailbox":"","Events": ["MessageNew"]}`,
		"events wrong":    `{"Username":"a","Mailbox":"INBOX","Events": "MessageNew"}`,
		"too many events": `{"Username":"a","Mailbox":"INBOX","Events": [` + strings.Repeat(`"FlagsSet",`, MaxEvents) + `"x"]}`,
	}
	for name, body := range cases {
		e := newEnv(t)
		status, reason, _ := e.do(t, "POST", "/notify", body)
		if status != 400 || !strings.HasPrefix(reason, "invalid notification") {
			t.Errorf("%s: = %d %q, want 400", name, status, reason)
		}
		if len(e.notif.calls) != 0 {
			t.Errorf("%s: notifier called", name)
		}
	}
}

// "Printable" covers Unicode too: user names with C1 controls (U+0085,
// U+009B, which a terminal may obey), the line separator U+2028 or format
// characters (U+202E reverses what follows, U+200B hides) are refused in
// /register and /notify alike. Mailbox names are refused for controls and
// separators, but keep format characters: a folder named with an emoji
// sequence (joined by U+200D) is a real folder.
func TestUnicodeControlAndFormatCharactersAreRefused(t *testing.T) {
	for _, c := range []string{`\u0085`, `\u009b`, `\u2028`, `\u2029`, `\u202e`, `\u200b`, `\ufeff`, `\u0000`} {
		e := newEnv(t)
		user := "Ali" + c + "ce@Example.com"
		body := strings.Replace(pluginRegister, "Alice@Example.com", user, 1)
		if status, reason, _ := e.do(t, "POST", "/register", body); status != 400 || !strings.Contains(reason, "Username: not printable") {
			t.Errorf("user name with %s: /register = %d %q, want 400", c, status, reason)
		}
		if n := len(e.reg.List("")); n != 0 {
			t.Errorf("user name with %s: stored", c)
		}
		body = strings.Replace(pluginNotify, "Alice@Example.com", user, 1)
		if status, reason, _ := e.do(t, "POST", "/notify", body); status != 400 || !strings.Contains(reason, "Username") || len(e.notif.calls) != 0 {
			t.Errorf("user name with %s: /notify = %d %q, want 400", c, status, reason)
		}
	}
	for _, c := range []string{`\u0085`, `\u009b`, `\u2028`} {
		e := newEnv(t)
		body := strings.Replace(pluginRegister, `"Notes"`, `"No`+c+`tes"`, 1)
		if status, reason, _ := e.do(t, "POST", "/register", body); status != 400 || !strings.Contains(reason, "Mailboxes") {
			t.Errorf("mailbox with %s: /register = %d %q, want 400", c, status, reason)
		}
	}
	e := newEnv(t)
	family := "\U0001F468\u200D\U0001F469\u200D\U0001F467 Family"
	if status, reason, _ := e.do(t, "POST", "/register", strings.Replace(pluginRegister, `"Notes"`, `"`+family+`"`, 1)); status != 200 {
		t.Errorf("a folder named with an emoji sequence: /register = %d %q, want 200", status, reason)
	}
}

// /notify takes user names up to the length /register stores, not more.
func TestNotifyAndRegisterShareTheUserNameLimit(t *testing.T) {
	long := strings.Repeat("u", MaxUsernameLen-len("@example.com")) + "@example.com"
	e := newEnv(t)
	if status, _, _ := e.do(t, "POST", "/register", strings.Replace(pluginRegister, "Alice@Example.com", long, 1)); status != 200 {
		t.Errorf("/register with a %d-byte user name = %d, want 200", len(long), status)
	}
	if status, _, _ := e.do(t, "POST", "/notify", strings.Replace(pluginNotify, "Alice@Example.com", long, 1)); status != 200 {
		t.Errorf("/notify with a %d-byte user name = %d, want 200", len(long), status)
	}
	longer := "x" + long
	if status, _, _ := e.do(t, "POST", "/register", strings.Replace(pluginRegister, "Alice@Example.com", longer, 1)); status != 400 {
		t.Errorf("/register with a %d-byte user name = %d, want 400", len(longer), status)
	}
	if status, reason, _ := e.do(t, "POST", "/notify", strings.Replace(pluginNotify, "Alice@Example.com", longer, 1)); status != 400 || !strings.Contains(reason, "Username") {
		t.Errorf("/notify with a %d-byte user name = %d %q, want 400 like /register", len(longer), status, reason)
	}
}

// A device token sent once in lower and once in upper case is one device:
// one registration, stored in upper case, so each event is one push.
func TestDeviceTokenSpellingsAreOneDevice(t *testing.T) {
	e := newEnv(t)
	hexTok := "2918a9f218931890821908309283098109381029309829018310983092892bcd"
	for _, spelling := range []string{hexTok, strings.ToUpper(hexTok), "2918A9f218931890821908309283098109381029309829018310983092892Bcd"} {
		if status, _, _ := e.do(t, "POST", "/register", strings.Replace(pluginRegister, tok, spelling, 1)); status != 200 {
			t.Fatalf("register %s = %d", spelling, status)
		}
	}
	got := e.reg.List("")
	if len(got) != 1 || got[0].DeviceToken != strings.ToUpper(hexTok) {
		t.Errorf("stored %+v, want one registration with the token in upper case", got)
	}
}

func TestRoutingLikeTheOldDaemon(t *testing.T) {
	e := newEnv(t)
	if status, body, _ := e.do(t, "GET", "/nothing", ""); status != 404 || body != "404 page not found\n" {
		t.Errorf("unknown path = %d %q", status, body)
	}
	status, body, h := e.do(t, "GET", "/register", "")
	if status != 405 || body != "Method Not Allowed\n" || h.Get("Allow") != "POST" {
		t.Errorf("GET /register = %d %q Allow=%q", status, body, h.Get("Allow"))
	}
	if status, body, _ := e.do(t, "GET", "/healthz", ""); status != 200 || body != "ok\n" {
		t.Errorf("healthz = %d %q", status, body)
	}
}

// The outcome of each /notify is logged at debug, with the user, mailbox
// and events (docs/troubleshooting.md), and not at all above debug.
func TestNotifyOutcomeIsLoggedAtDebugOnly(t *testing.T) {
	for _, level := range []string{"debug", "info"} {
		var out bytes.Buffer
		log, err := logging.New(&out, level, "text")
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			st     notify.Status
			status int
			msg    string
		}{
			{notify.UnknownUser, 404, `msg="notify: no registration for the user"`},
			{notify.NoMailbox, 204, `msg="notify: no device registered for the mailbox"`},
			{notify.Pushed, 200, `msg=notify `},
		} {
			out.Reset()
			h := NewHandler(Options{Notifier: &fakeNotifier{status: c.st}, Log: log})
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/notify", strings.NewReader(pluginNotify)))
			if rec.Code != c.status {
				t.Fatalf("%s: status %d, want %d", level, rec.Code, c.status)
			}
			line := out.String()
			if level == "info" {
				if line != "" {
					t.Errorf("info level logged %q", line)
				}
				continue
			}
			for _, want := range []string{c.msg, "level=debug", "user=alice@example.com", "mailbox=INBOX", `events="[MessageNew]"`} {
				if !strings.Contains(line, want) {
					t.Errorf("debug line %q lacks %s", line, want)
				}
			}
		}
	}
}

const secret = "3f1c9a0d5b7e2f4a6c8e0b1d3f5a7c9e"

func newSecretEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	e.srv.Config.Handler = NewHandler(Options{Registrar: e.reg, Notifier: e.notif, Secret: []byte(secret),
		Topic: func() (string, error) { return topic, nil }})
	return e
}

// With a secret, /register and /notify without it get 401 and change
// nothing; with it they work; /healthz needs none.
func TestSecretIsRequired(t *testing.T) {
	e := newSecretEnv(t)
	for _, auth := range []string{"", "Bearer wrong", "Bearer " + secret[:len(secret)-1], "Basic " + secret, secret, "Bearer  " + secret} {
		status, _, h := e.doAuth(t, "POST", "/register", pluginRegister, auth)
		if status != 401 || h.Get("WWW-Authenticate") == "" {
			t.Errorf("register with Authorization %q = %d, want 401 with WWW-Authenticate", auth, status)
		}
		if status, _, _ := e.doAuth(t, "POST", "/notify", pluginNotify, auth); status != 401 {
			t.Errorf("notify with Authorization %q = %d, want 401", auth, status)
		}
	}
	if n := len(e.reg.List("")); n != 0 || len(e.notif.calls) != 0 {
		t.Fatalf("refused requests changed something: %d registrations, %d notifications", n, len(e.notif.calls))
	}
	if status, body, _ := e.doAuth(t, "POST", "/register", pluginRegister, "Bearer "+secret); status != 200 || body != topic {
		t.Errorf("register with the secret = %d %q", status, body)
	}
	if status, _, _ := e.doAuth(t, "POST", "/notify", pluginNotify, "bearer "+secret); status != 200 {
		t.Errorf("notify with the secret (lower-case scheme) = %d", status)
	}
	if status, _, _ := e.do(t, "GET", "/healthz", ""); status != 200 {
		t.Errorf("healthz = %d, want 200 without a secret", status)
	}
}

// A request without the secret is answered 401 as soon as its headers are
// read, whatever its body does (announced and never sent, or chunked and
// never ended), and its connection is closed: waiting for the body would
// hold the connection for as long as the client likes. Only requests
// that passed the check reach Authenticated.
func TestUnauthenticatedRequestsAreRefusedBeforeTheirBody(t *testing.T) {
	var authenticated atomic.Int64
	e := newEnv(t)
	e.srv.Config.Handler = NewHandler(Options{Registrar: e.reg, Notifier: e.notif, Secret: []byte(secret),
		Topic: func() (string, error) { return topic, nil }, Authenticated: func(*http.Request) { authenticated.Add(1) }})
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	for name, head := range map[string]string{
		"announced body never sent": "POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
		"chunked body never ended":  "POST /notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"Username\":\"a\",",
		"wrong secret":              "POST /register HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Length: 1000\r\n\r\n{",
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, head); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Errorf("%s: no answer within 5 s: %v", name, err)
			c.Close()
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("%s: %d, want 401", name, resp.StatusCode)
		}
		if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s: the connection stays open after the 401 (%v)", name, err)
		}
		c.Close()
	}
	if n := authenticated.Load(); n != 0 {
		t.Errorf("Authenticated saw %d refused requests", n)
	}
	if status, _, _ := e.doAuth(t, "POST", "/register", pluginRegister, "Bearer "+secret); status != 200 || authenticated.Load() != 1 {
		t.Errorf("with the secret: %d, Authenticated saw %d, want 200 and 1", status, authenticated.Load())
	}
}

// At maxRegistrations a new device gets 503; one already registered can
// still register again.
func TestRegistryFullIs503(t *testing.T) {
	r := registrytest.Open(t, registrytest.Defaults(func(o *registry.Options) { o.MaxRegistrations = 1; o.RegistrationRefresh = time.Nanosecond }))
	log, hook := logtest.NewNullLogger()
	srv := httptest.NewServer(NewHandler(Options{Registrar: r, Notifier: &fakeNotifier{}, Log: log, Topic: func() (string, error) { return topic, nil }}))
	defer srv.Close()
	post := func(body string) (int, string) {
		resp, err := http.Post(srv.URL+"/register", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, _ := post(pluginRegister); status != 200 {
		t.Fatalf("first registration = %d", status)
	}
	for range 3 {
		if status, body := post(strings.Replace(pluginRegister, "Alice", "Bob", 1)); status != 503 || !strings.Contains(body, "registry full") {
			t.Errorf("registration over the cap = %d %q, want 503 registry full", status, body)
		}
	}
	if status, _ := post(strings.Replace(pluginRegister, `"Notes"`, `"Sent"`, 1)); status != 200 {
		t.Errorf("re-registration at the cap = %d, want 200", status)
	}
	warned := 0
	for _, e := range hook.AllEntries() {
		if strings.Contains(e.Message, "maxRegistrations") {
			warned++
		}
	}
	if warned != 1 {
		t.Errorf("%d log lines for 3 refusals, want 1 (rate-limited)", warned)
	}
}

// unreachableRegistrar stands for a registry whose PostgreSQL is down.
type unreachableRegistrar struct{}

func (unreachableRegistrar) Register(context.Context, registry.Registration) error {
	return fmt.Errorf("%w: dial tcp 192.0.2.5:5432: connect: connection refused", registry.ErrUnavailable)
}

func TestRegisterWithTheDatabaseDownIs503(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	srv := httptest.NewServer(NewHandler(Options{Registrar: unreachableRegistrar{}, Notifier: &fakeNotifier{},
		Topic: func() (string, error) { return topic, nil }, Log: log}))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/register", "application/json", strings.NewReader(pluginRegister))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || !strings.Contains(string(b), "registry unavailable") || strings.Contains(string(b), "192.0.2.5") {
		t.Errorf("= %d %q, want 503 without the database's address", resp.StatusCode, b)
	}
	if e := hook.LastEntry(); e == nil || !strings.Contains(fmt.Sprint(e.Data[logrus.ErrorKey]), "connection refused") {
		t.Errorf("the log did not get the reason: %+v", e)
	}
}

type unconfirmedRegistrar struct{}

func (unconfirmedRegistrar) Register(context.Context, registry.Registration) error {
	return fmt.Errorf("%w: %w: commit: timeout", registry.ErrUnavailable, registry.ErrUnconfirmed)
}

// A commit the database did not confirm is a 503 that says the
// registration may still be stored, not that it was refused.
func TestUnconfirmedRegistrationIs503ThatMayBeStored(t *testing.T) {
	srv := httptest.NewServer(NewHandler(Options{Registrar: unconfirmedRegistrar{}, Notifier: &fakeNotifier{},
		Topic: func() (string, error) { return topic, nil }}))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/register", "application/json", strings.NewReader(pluginRegister))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || !strings.Contains(string(b), "registry unavailable") || !strings.Contains(string(b), "may still be stored") {
		t.Errorf("= %d %q, want 503 saying it may still be stored", resp.StatusCode, b)
	}
}

func TestPublicReasonShortensPathsAndPutsErrnoInWords(t *testing.T) {
	for in, want := range map[string]string{
		"certificate /etc/xapsd/push.pem has expired":                       "certificate push.pem has expired",
		"open /var/lib/xapsd/push.key: no such file or directory":           "open push.key: missing",
		"open /etc/xapsd/push.p12: permission denied":                       "open push.p12: not readable by xapsd",
		`reading "/etc/xapsd/push.p12": bad password`:                       `reading "push.p12": bad password`,
		"apnsEndpoint: development, but see https://api.push.apple.com/3/x": "apnsEndpoint: development, but see https://api.push.apple.com/3/x",
		"/root.pem at the start":                                            "root.pem at the start",
	} {
		if got := publicReason(errors.New(in)); got != want {
			t.Errorf("publicReason(%q) = %q, want %q", in, got, want)
		}
	}
}
