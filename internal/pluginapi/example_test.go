package pluginapi_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"

	"github.com/xapsd/xapsd/internal/notify"
	"github.com/xapsd/xapsd/internal/pluginapi"
	"github.com/xapsd/xapsd/internal/registry"
)

// phones stands in for the registry and the push service: it keeps the
// registrations and says what a mailbox event would wake.
type phones struct{ regs []registry.Registration }

func (p *phones) Register(_ context.Context, r registry.Registration) error {
	p.regs = append(p.regs, r)
	return nil
}

func (p *phones) Notify(user, mailbox string, _ []string) notify.Status {
	known := false
	for _, r := range p.regs {
		if r.User == user {
			known = true
			if slices.Contains(r.Mailboxes, mailbox) {
				return notify.Pushed
			}
		}
	}
	if known {
		return notify.NoMailbox
	}
	return notify.UnknownUser
}

// The Dovecot plugin's conversation with xapsd: a phone registers through
// IMAP (the answer is the APNs topic the phone listens to), then mailbox
// events come in; what was not understood is refused with a reason the
// plugin shows to the IMAP client.
func ExampleNewHandler() {
	p := &phones{}
	api := pluginapi.NewHandler(pluginapi.Options{
		Registrar: p,
		Notifier:  p,
		Topic:     func() (string, error) { return "com.apple.mail.XServer.example", nil },
		Secret:    []byte("0123456789abcdef0123"),
	})
	send := func(path, body string) {
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer 0123456789abcdef0123")
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, req)
		fmt.Println(strings.TrimSpace(fmt.Sprintf("%s %d %s", path, rec.Code, rec.Body.String())))
	}
	send("/register", `{"ApsAccountId":"A1B2C3D4","ApsDeviceToken":"00112233445566778899AABBCCDDEEFF","ApsSubtopic":"com.apple.mobilemail","Username":"Alice@Example.org","Mailboxes":["INBOX"]}`)
	send("/notify", `{"Username":"alice@example.org","Mailbox":"INBOX","Events":["MessageNew"]}`)
	send("/notify", `{"Username":"alice@example.org","Mailbox":"Trash","Events":["MessageNew"]}`)
	send("/notify", `{"Username":"bob@example.org","Mailbox":"INBOX","Events":["MessageNew"]}`)
	send("/register", `{"Username":"alice@example.org"}`)
	// Output:
	// /register 200 com.apple.mail.XServer.example
	// /notify 200
	// /notify 204
	// /notify 404
	// /register 400 invalid registration: ApsAccountId: missing; ApsDeviceToken: missing; ApsSubtopic: missing; Mailboxes: missing or empty
}
