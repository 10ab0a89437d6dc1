package pluginapi

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/xapsd/xapsd/internal/notify"
	"github.com/xapsd/xapsd/internal/registry"
)

type recordingRegistrar struct{ got []registry.Registration }

func (r *recordingRegistrar) Register(_ context.Context, g registry.Registration) error {
	r.got = append(r.got, g)
	return nil
}

// FuzzRegister: whatever the body, the answer is 200 with the topic, a
// 4xx, and only a 200 stores anything, and only a valid registration.
func FuzzRegister(f *testing.F) {
	f.Add([]byte(pluginRegister))
	f.Add([]byte(`{"apsaccountid":"x","ApsDeviceToken":"00112233445566778899","ApsSubtopic":"com.apple.mobilemail","Username":"u","Mailboxes":["INBOX","INBOX"]}`))
	f.Add([]byte(`{"ApsAccountId":1}`))
	f.Add([]byte(`{"Mailboxes":[null]}`))
	f.Add([]byte("\xff\xfe"))
	f.Fuzz(func(t *testing.T, body []byte) {
		reg := &recordingRegistrar{}
		h := NewHandler(Options{Registrar: reg, Notifier: &fakeNotifier{}, Topic: func() (string, error) { return topic, nil }})
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/register", strings.NewReader(string(body))))
		switch {
		case rec.Code == http.StatusOK:
			if rec.Body.String() != topic || len(reg.got) != 1 {
				t.Fatalf("200 with body %q and %d registrations", rec.Body.String(), len(reg.got))
			}
			g := reg.got[0]
			if _, err := hex.DecodeString(g.DeviceToken); err != nil || g.AccountID == "" || g.User == "" ||
				g.User != registry.FoldUser(g.User) || len(g.Mailboxes) == 0 {
				t.Fatalf("stored an invalid registration %+v", g)
			}
		case rec.Code >= 400 && rec.Code < 500:
			if len(reg.got) != 0 {
				t.Fatalf("%d but stored %+v", rec.Code, reg.got)
			}
			if strings.Count(strings.TrimSuffix(rec.Body.String(), "\n"), "\n") != 0 {
				t.Fatalf("reason is not one line: %q", rec.Body.String())
			}
		default:
			t.Fatalf("status %d for %q", rec.Code, body)
		}
	})
}

// FuzzNotify: 400 for what is not a notification, and the notifier only
// ever sees a non-empty user, mailbox and event list.
func FuzzNotify(f *testing.F) {
	f.Add([]byte(pluginNotify))
	f.Add([]byte(`{"Username":"a","Mailbox":"INBOX"}`))
	f.Add([]byte(`{"username":"A","mailbox":"x","events":["FlagsSet","MessageRead"]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		n := &fakeNotifier{status: notify.Pushed}
		h := NewHandler(Options{Notifier: n, Registrar: &recordingRegistrar{}, Topic: func() (string, error) { return topic, nil }})
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/notify", strings.NewReader(string(body))))
		switch rec.Code {
		case http.StatusOK:
			if len(n.calls) != 1 || strings.HasPrefix(n.calls[0], "|") || strings.Contains(n.calls[0], "||") || strings.HasSuffix(n.calls[0], "|") {
				t.Fatalf("notifier calls %q", n.calls)
			}
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			if len(n.calls) != 0 {
				t.Fatalf("rejected but notified: %q", n.calls)
			}
		default:
			t.Fatalf("status %d", rec.Code)
		}
	})
}

// decodeAsBefore is decode as it was before its fast path: one
// json.Decoder per request. The fast path must not change what is
// accepted, what is stored or what the client is told.
func decodeAsBefore(w http.ResponseWriter, r *http.Request, v any) (int, error) {
	return decodeFailure(json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBody)).Decode(v))
}

func FuzzDecodeMatchesDecoder(f *testing.F) {
	f.Add([]byte(pluginRegister))
	f.Add([]byte(pluginNotify))
	// The forms decodeNotifyBody reads, and its near misses.
	for _, b := range []string{
		`{"Username":"a","Mailbox":"INBOX","Events":["MessageNew","FlagsSet"]}`,
		` { "Username" : "ü@x" ,"Mailbox":"Sent Items", "Events" : [ ] } ` + "\r\n",
		`{"Username":"a","Mailbox":"Sent\tItems","Events":[]}`,
		`{"Events":["MessageNew"],"Mailbox":"INBOX","Username":"a"}`,
		`{"Username":"a","Username":"b","Mailbox":"INBOX"}`,
		`{"username":"a","Mailbox":"INBOX","Events":["MessageNew"]}`,
		`{"Username":"a\u0062","Mailbox":"INBOX"}`,
		`{"Username":null,"Mailbox":"INBOX","Events":null}`,
		`{"Username":"a","Mailbox":"INBOX","Events":["x",]}`,
		`{"Username":"a","Mailbox":"INBOX","Events":[1]}`,
		`{"Username":"a","Mailbox":"INBOX","Other":"x"}`,
		`{"Username":"a","Mailbox":"INBOX",}`,
		`{"Username":"a"}x`,
		`{}`,
		"{\"Username\":\"a\tb\"}",
	} {
		f.Add([]byte(b))
	}
	f.Add([]byte(`{"Username":"a","Mailbox":"INBOX","Events":["MessageNew"]} trailing`))
	f.Add([]byte(`{"Username":"a"}{"Username":"b"}`))
	f.Add([]byte(`{"Username":1,"Mailbox":"INBOX"}`))
	f.Add([]byte(`{"Events":"MessageNew"}`))
	f.Add([]byte(" \n\t"))
	f.Add([]byte(""))
	f.Add([]byte(`{"Username":"a"`))
	f.Add([]byte(`{"Username":"a"}` + strings.Repeat(" ", MaxBody)))
	f.Add([]byte(`{"Username":"` + strings.Repeat("x", MaxBody) + `"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		h := NewHandler(Options{}).(*handler)
		for _, target := range []func() any{func() any { return &notifyRequest{} }, func() any { return &registerRequest{} }} {
			got, want := target(), target()
			req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
			req.Body = http.MaxBytesReader(httptest.NewRecorder(), req.Body, MaxBody) // as route bounds it
			gotStatus, gotErr := h.decode(req, got)
			wantStatus, wantErr := decodeAsBefore(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body)), want)
			if len(body) <= MaxBody && !utf8.Valid(body) {
				// Refused whole since invalid UTF-8 was (the decoder
				// replaced it with U+FFFD).
				wantStatus, wantErr = http.StatusBadRequest, errors.New("body is not valid UTF-8")
			}
			if gotStatus != wantStatus || fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
				t.Fatalf("%q: decode gives %d %v, the decoder gave %d %v", body, gotStatus, gotErr, wantStatus, wantErr)
			}
			if gotErr == nil && !reflect.DeepEqual(got, want) {
				t.Fatalf("%q: decode stored %+v, the decoder %+v", body, got, want)
			}
		}
	})
}
