// Package notify decides what a mailbox event from Dovecot means: which
// registered devices it concerns, and whether they are pushed now (new
// mail) or after the debounce delay (everything else) (docs/protocol.md#events).
package notify

import (
	"github.com/xapsd/xapsd/internal/registry"
)

// Status is the answer to one event; the HTTP layer maps it to the status
// codes the Dovecot plugin knows.
type Status int

const (
	Pushed      Status = iota // devices found; pushed or scheduled (200)
	Ignored                   // not a mailbox xapsd pushes for (200)
	NoMailbox                 // user registered, but not for this mailbox (204)
	UnknownUser               // no registration for the user (404)
)

// EventNew is the Dovecot event for a delivery by LDA/LMTP.
const EventNew = "MessageNew"

// Lookup finds registrations (registry.Registry).
type Lookup interface {
	Lookup(user, mailbox string, inboxOnly bool) registry.LookupResult
}

// Delayer debounces (scheduler.Scheduler).
type Delayer interface {
	Delay(registry.Key)
	Cancel(registry.Key)
}

// Enqueuer sends now (apns.Sender).
type Enqueuer interface {
	Enqueue(registry.Key)
}

// Recorder keeps what each event for a user led to (history.History), for
// xapsd diagnose. It is called on every event, so it must be cheap.
type Recorder interface {
	Notified(user, mailbox string, events []string, result string)
}

// What an event led to, in the words xapsd diagnose shows.
const (
	ResultPushed    = "pushed now"                              // new mail
	ResultDelayed   = "push delayed"                            // other changes, pushed once quiet
	ResultNoMailbox = "no device asked for this mailbox"        // NoMailbox
	ResultNoDevice  = "no device registered for this user name" // UnknownUser
	ResultIgnored   = "ignored: pushMailboxes is inbox"         // Ignored
)

// Service routes events.
type Service struct {
	Registry  Lookup
	Scheduler Delayer
	Sender    Enqueuer
	// History, when set, is told what became of every event.
	History Recorder
	// InboxOnly restores the old daemon's rule: only INBOX changes push.
	InboxOnly bool
}

// Notify handles one /notify event.
func (s *Service) Notify(user, mailbox string, events []string) Status {
	user = registry.FoldUser(user)
	st, result := s.route(user, mailbox, events)
	if s.History != nil {
		s.History.Notified(user, mailbox, events, result)
	}
	return st
}

func (s *Service) route(user, mailbox string, events []string) (Status, string) {
	if s.InboxOnly && mailbox != "INBOX" {
		// Acknowledged without a lookup, as the old daemon did.
		return Ignored, ResultIgnored
	}
	res := s.Registry.Lookup(user, mailbox, s.InboxOnly)
	if !res.KnownUser {
		return UnknownUser, ResultNoDevice
	}
	if len(res.Targets) == 0 {
		return NoMailbox, ResultNoMailbox
	}
	isNew := false
	for _, e := range events {
		if e == EventNew {
			isNew = true
			break
		}
	}
	for _, k := range res.Targets {
		if isNew {
			s.Scheduler.Cancel(k)
			s.Sender.Enqueue(k)
		} else {
			s.Scheduler.Delay(k)
		}
	}
	if isNew {
		return Pushed, ResultPushed
	}
	return Pushed, ResultDelayed
}
