// Package diagnose walks, for one user, the chain from a delivery to the
// phone and says where it breaks:
//
//  1. the daemon: its push credential, topic and expiry, whether sending
//     is paused and why, whether APNs can be reached;
//  2. the user's registrations: each device, its account id and
//     mailboxes, when it registered;
//  3. the events: the last few /notify for the user, and for user names
//     that look like it (the same local part, another domain or none) but
//     have no device, the usual sign that the IMAP login and the delivery
//     use different names;
//  4. the pushes: per device the last one (when, outcome, Apple's reason)
//     and what holds the next one back (pacing, the delay, a retry, a
//     pause).
//
// A verdict names the first step that fails, or says that the server side
// works and the phone's Mail settings are next. `xapsd diagnose USER`
// asks the running daemon for a Report through the admin socket (ctl); the
// daemon fills in Sources from its parts and the per-user history.
package diagnose

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/xapsd/xapsd/internal/apns"
	"github.com/xapsd/xapsd/internal/history"
	"github.com/xapsd/xapsd/internal/notify"
	"github.com/xapsd/xapsd/internal/registry"
)

// Daemon is what the daemon says about itself.
type Daemon struct {
	Credential string    // kind and file, as in the start-up line
	Topic      string    // what /register answers
	Problem    string    // why devices cannot register now; "" when they can
	Expires    time.Time // the certificate's end; zero for a token or dry-run
	DryRun     bool
	Paused     string // why sending is paused; "" when it is not
	APNs       apns.Reachability
}

// Registry is what diagnose needs of the registry.
type Registry interface {
	List(user string) []registry.Registration
	Users(match func(user string) bool, limit int) []string
}

// History is the per-user history (history.History).
type History interface {
	User(name string) (history.User, bool)
	LookAlikes(name string) []history.User
}

// Queue is the push queue (apns.Sender).
type Queue interface {
	Waiting(k registry.Key) (apns.Waiting, bool)
}

// Delays is the debounce scheduler (scheduler.Scheduler).
type Delays interface {
	Pending(k registry.Key) (last time.Time, ok bool)
	Due(last time.Time) time.Time
}

// Sources are the parts of the running daemon a diagnosis reads.
type Sources struct {
	Daemon   func(ctx context.Context) Daemon
	Registry Registry
	History  History
	Queue    Queue
	Delays   Delays
	Now      func() time.Time // default time.Now
}

// Report is a diagnosis, as the admin socket sends it and `xapsd diagnose
// --json` prints it.
type Report struct {
	User       string       `json:"user"`
	Time       time.Time    `json:"time"`
	Daemon     DaemonReport `json:"daemon"`
	Devices    []Device     `json:"devices"`
	Events     []Event      `json:"events"`
	LookAlikes []LookAlike  `json:"lookAlikes"`
	Steps      []Step       `json:"steps"`
	Verdict    Verdict      `json:"verdict"`
}

// DaemonReport is step 1's data.
type DaemonReport struct {
	Credential string     `json:"credential"`
	Topic      string     `json:"topic"`
	Problem    string     `json:"problem,omitempty"`
	Expires    *time.Time `json:"expires,omitempty"`
	DaysLeft   *int       `json:"daysLeft,omitempty"`
	DryRun     bool       `json:"dryRun"`
	Paused     string     `json:"paused,omitempty"`
	APNs       string     `json:"apns"`
	APNsError  string     `json:"apnsError,omitempty"`
}

// Device is one registration with its last push and what holds the next.
type Device struct {
	AccountID   string    `json:"accountId"`
	DeviceToken string    `json:"deviceToken"`
	Mailboxes   []string  `json:"mailboxes"`
	Registered  time.Time `json:"registered"`
	LastPush    *Push     `json:"lastPush,omitempty"`
	Held        *Hold     `json:"held,omitempty"`
}

// Push is the last attempt to push to a device.
type Push struct {
	Time    time.Time `json:"time"`
	Outcome string    `json:"outcome"`
	Status  int       `json:"status"`
	Reason  string    `json:"reason,omitempty"`
}

// Hold is what a push waits for: HoldDelay (the debounce of changes that
// are not new mail), or the queue's apns.Wait words.
type Hold struct {
	By      string     `json:"by"`
	Until   *time.Time `json:"until,omitempty"`
	Attempt int        `json:"attempt,omitempty"`
}

// HoldDelay: the push waits in the scheduler for the device to be quiet.
const HoldDelay = "delay"

// Event is one /notify and what xapsd did with it.
type Event struct {
	Time    time.Time `json:"time"`
	Mailbox string    `json:"mailbox"`
	Events  []string  `json:"events"`
	More    int       `json:"more,omitempty"`
	Result  string    `json:"result"`
}

// LookAlike is another user name like the one diagnosed: registered (with
// its devices counted), or seen in /notify (with its events).
type LookAlike struct {
	User    string  `json:"user"`
	Devices int     `json:"devices"`
	Events  []Event `json:"events,omitempty"`
}

// Step is one link of the chain.
type Step struct {
	Name    string   `json:"name"`
	Status  string   `json:"status"` // StatusOK, StatusWarn or StatusFail
	Summary string   `json:"summary"`
	Lines   []string `json:"lines,omitempty"`
	Next    string   `json:"next,omitempty"` // what to check, when it fails
}

// Verdict is the first step that fails, or none.
type Verdict struct {
	OK   bool   `json:"ok"`
	Step string `json:"step,omitempty"`
	Text string `json:"text"`
}

// Step states and names.
const (
	StatusOK   = "ok"
	StatusWarn = "warn"
	StatusFail = "fail"

	StepDaemon        = "daemon"
	StepRegistrations = "registrations"
	StepEvents        = "events"
	StepPushes        = "pushes"
)

// AllFine is the verdict when every step passes: what is left is the phone.
const AllFine = "the server side works: check the phone's Mail settings (Settings → Mail → Mail Accounts → Fetch New Data: Push on, and Push for this account)"

// DryRunNote is the daemon step's warning, and the verdict's end, in
// dry-run mode: everything works but Apple is never asked.
const DryRunNote = "apnsEndpoint is dry-run: pushes are logged, never sent to Apple"

// maxLookAlikes bounds the other user names reported.
const maxLookAlikes = 10

// Diagnose walks the chain for user (folded as the registry files it).
func (s Sources) Diagnose(ctx context.Context, user string) Report {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	user = registry.FoldUser(user)
	r := Report{User: user, Time: now().UTC(), Devices: []Device{}, Events: []Event{}, LookAlikes: []LookAlike{}}
	w := walk{Sources: s, r: &r, now: r.Time}
	w.daemon(s.Daemon(ctx))
	regs := s.Registry.List(user)
	w.lookAlikes(user, len(regs) > 0)
	w.registrations(regs)
	w.events()
	w.pushes(regs)
	r.Verdict = Verdict{OK: true, Text: AllFine}
	if r.Daemon.DryRun {
		r.Verdict.Text = "the server side works, but " + DryRunNote
	}
	for _, st := range r.Steps {
		if st.Status == StatusFail {
			r.Verdict = Verdict{Step: st.Name, Text: st.Summary}
			if st.Next != "" {
				r.Verdict.Text += ": " + st.Next
			}
			break
		}
	}
	return r
}

// walk builds one Report.
type walk struct {
	Sources
	r   *Report
	now time.Time
	own *history.User // the user's own history, nil when none
}

func (w *walk) step(name, status, summary, next string, lines ...string) {
	w.r.Steps = append(w.r.Steps, Step{Name: name, Status: status, Summary: summary, Next: next, Lines: lines})
}

func (w *walk) daemon(d Daemon) {
	rep := DaemonReport{Credential: d.Credential, Topic: d.Topic, Problem: d.Problem, DryRun: d.DryRun, Paused: d.Paused, APNs: d.APNs.State}
	if d.APNs.Err != nil {
		rep.APNsError = d.APNs.Err.Error()
	}
	cred := fmt.Sprintf("credential %s, topic %s", orNone(d.Credential), orNone(d.Topic))
	daysLeft := 0
	if !d.Expires.IsZero() {
		e := d.Expires.UTC()
		daysLeft = int(d.Expires.Sub(w.now).Hours() / 24)
		rep.Expires, rep.DaysLeft = &e, &daysLeft
		cred += fmt.Sprintf(", expires %s (%d days left)", stamp(e), daysLeft)
	}
	w.r.Daemon = rep
	apnsLine := "APNs: " + d.APNs.State
	switch d.APNs.State {
	case apns.ReachReachable:
		apnsLine += fmt.Sprintf(" (connected in %d ms)", d.APNs.Took.Milliseconds())
	case apns.ReachConnected:
		apnsLine += " (a connection is open)"
	case apns.ReachUnreachable:
		apnsLine += ": " + rep.APNsError
	}
	sending := "sending: not paused"
	if d.Paused != "" {
		sending = "sending: " + d.Paused
	}
	lines := []string{cred, sending, apnsLine}
	const creds = "docs/credentials.md"
	switch {
	case d.Problem != "":
		w.step(StepDaemon, StatusFail, "no usable push credential: "+d.Problem, "fix the credential (/readyz and the log say the same; "+creds+")", lines...)
	case d.Paused != "":
		w.step(StepDaemon, StatusFail, d.Paused, "fix what APNs refuses, then reload (systemctl reload xapsd)", lines...)
	case d.APNs.State == apns.ReachUnreachable:
		w.step(StepDaemon, StatusFail, "APNs cannot be reached: "+rep.APNsError, "let this host reach APNs (api.push.apple.com, port 443: firewall, proxy, DNS)", lines...)
	case d.DryRun:
		// A warning: the rest of the chain is worth checking before
		// there is a credential (make run, the README's try-out).
		w.step(StepDaemon, StatusWarn, DryRunNote, "set a push credential and apnsEndpoint: production", lines...)
	case !d.Expires.IsZero() && daysLeft < 14:
		w.step(StepDaemon, StatusWarn, fmt.Sprintf("the push certificate expires in %d days", daysLeft), "renew it ("+creds+")", lines...)
	default:
		w.step(StepDaemon, StatusOK, "credential usable, sending, APNs reachable", "", lines...)
	}
}

// lookAlikes finds the other user names like user: registered ones when
// user has no device, and, from the history, ones that got /notify
// without having a device.
func (w *walk) lookAlikes(user string, registered bool) {
	local := history.LocalPart(user)
	if !registered {
		for _, u := range w.Registry.Users(func(u string) bool {
			return u != user && strings.EqualFold(history.LocalPart(u), local)
		}, maxLookAlikes) {
			w.r.LookAlikes = append(w.r.LookAlikes, LookAlike{User: u, Devices: len(w.Registry.List(u))})
		}
	}
	if own, ok := w.History.User(user); ok {
		w.own = &own
	}
	for _, h := range w.History.LookAlikes(user) {
		if len(w.r.LookAlikes) >= maxLookAlikes {
			break
		}
		if len(w.Registry.List(h.Name)) > 0 || len(h.Events) == 0 {
			continue // registered ones are listed above, or are someone else
		}
		w.r.LookAlikes = append(w.r.LookAlikes, LookAlike{User: h.Name, Events: events(h.Events)})
	}
}

// nameHint is what to do about a user name that differs between the IMAP
// login and the delivery.
const nameHint = "make the IMAP login and the delivery end up as the same user name: auth_username_format, or the plugin's user lookup " +
	"(xaps_user_lookup on Dovecot 2.4, user_lookup= in xaps_config on 2.3); docs/troubleshooting.md#1-the-same-user-name-on-both-sides"

func (w *walk) registrations(regs []registry.Registration) {
	var lines []string
	for _, g := range regs {
		w.r.Devices = append(w.r.Devices, Device{AccountID: g.AccountID, DeviceToken: g.DeviceToken, Mailboxes: g.Mailboxes, Registered: g.Registered.UTC()})
		lines = append(lines, fmt.Sprintf("%s account %s, registered %s (%s ago), mailboxes %s",
			ShortToken(g.DeviceToken), g.AccountID, stamp(g.Registered), ago(w.now, g.Registered), strings.Join(g.Mailboxes, ", ")))
	}
	if len(regs) > 0 {
		w.step(StepRegistrations, StatusOK, fmt.Sprintf("%d device(s) registered for %s", len(regs), w.r.User), "", lines...)
		return
	}
	var elsewhere []string
	for _, l := range w.r.LookAlikes {
		if l.Devices > 0 {
			elsewhere = append(elsewhere, fmt.Sprintf("%s (%d)", l.User, l.Devices))
			lines = append(lines, fmt.Sprintf("registered under %s: %d device(s)", l.User, l.Devices))
		}
	}
	if len(elsewhere) > 0 {
		w.step(StepRegistrations, StatusFail, fmt.Sprintf("no device registered for %s, but under %s: the IMAP login and the delivery use different user names",
			w.r.User, strings.Join(elsewhere, ", ")), nameHint, lines...)
		return
	}
	w.step(StepRegistrations, StatusFail, "no device registered for "+w.r.User,
		"the phone has not registered: check that IMAP offers XAPPLEPUSHSERVICE after login and that Dovecot's log has no failed registration (docs/troubleshooting.md#2-did-the-phone-register)", lines...)
}

func (w *walk) events() {
	var own []history.Event
	if w.own != nil {
		own = w.own.Events
	}
	w.r.Events = events(own)
	var lines []string
	for _, e := range w.r.Events {
		lines = append(lines, eventLine(w.now, "", e))
	}
	var strays []string // look-alikes without device that got events
	for _, l := range w.r.LookAlikes {
		if l.Devices == 0 && len(l.Events) > 0 {
			strays = append(strays, l.User)
			for _, e := range l.Events {
				lines = append(lines, eventLine(w.now, l.User, e))
			}
		}
	}
	registered := len(w.r.Devices) > 0
	switch {
	case len(own) == 0 && len(strays) > 0 && registered:
		w.step(StepEvents, StatusFail, fmt.Sprintf("no /notify for %s, but for %s, which has no device: mail is delivered under another user name than the phone registered with",
			w.r.User, strings.Join(strays, ", ")), nameHint, lines...)
	case len(own) == 0 && !registered:
		w.step(StepEvents, StatusWarn, "no /notify for "+w.r.User+" since xapsd started", "", lines...)
	case len(own) == 0:
		w.step(StepEvents, StatusFail, "no /notify for "+w.r.User+" since xapsd started",
			"deliver a mail to "+w.r.User+" and run xapsd diagnose again; if none shows up, Dovecot does not tell xapsd: check mail_plugins in protocol lmtp (docs/troubleshooting.md#3-does-a-delivery-reach-xapsd)", lines...)
	case len(strays) > 0:
		w.step(StepEvents, StatusWarn, fmt.Sprintf("/notify arrives for %s, and also for %s, which has no device: some mail is delivered under another user name",
			w.r.User, strings.Join(strays, ", ")), nameHint, lines...)
	case allResult(own, notify.ResultNoMailbox):
		w.step(StepEvents, StatusWarn, "the /notify for "+w.r.User+" were all for mailboxes no device asked for", "", lines...)
	default:
		w.step(StepEvents, StatusOK, fmt.Sprintf("%d recent /notify for %s", len(own), w.r.User), "", lines...)
	}
}

func allResult(evs []history.Event, result string) bool {
	for _, e := range evs {
		if e.Result != result {
			return false
		}
	}
	return len(evs) > 0
}

func (w *walk) pushes(regs []registry.Registration) {
	if len(regs) == 0 {
		w.step(StepPushes, StatusWarn, "no device to push to", "")
		return
	}
	last := map[[2]string]history.Push{}
	if w.own != nil {
		for _, p := range w.own.Pushes {
			k := [2]string{p.AccountID, p.Token}
			if _, seen := last[k]; !seen {
				last[k] = p
			}
		}
	}
	var lines []string
	var failing []string
	var firstAdvice string
	for i, g := range regs {
		d := &w.r.Devices[i]
		line := ShortToken(g.DeviceToken) + ": "
		if p, ok := last[[2]string{g.AccountID, g.DeviceToken}]; ok {
			d.LastPush = &Push{Time: p.Time.UTC(), Outcome: p.Outcome, Status: p.Status, Reason: p.Reason}
			line += fmt.Sprintf("last push %s (%s ago): %s", stamp(p.Time), ago(w.now, p.Time), p.Outcome)
			if p.Status != 0 {
				line += fmt.Sprintf(" %d", p.Status)
			}
			if p.Reason != "" {
				line += " " + p.Reason
			}
			if advice, bad := pushAdvice(p, w.r.User); bad {
				failing = append(failing, fmt.Sprintf("%s: %s %s", ShortToken(g.DeviceToken), p.Outcome, strings.TrimSpace(fmt.Sprintf("%s %s", statusText(p.Status), p.Reason))))
				if firstAdvice == "" {
					firstAdvice = advice
				}
			}
		} else {
			line += "no push since xapsd started"
		}
		if h := w.hold(g.Key); h != nil {
			d.Held = h
			line += "; next push: " + holdText(w.now, h)
		}
		lines = append(lines, line)
	}
	if len(failing) > 0 {
		w.step(StepPushes, StatusFail, "pushes fail at Apple: "+strings.Join(failing, "; "), firstAdvice, lines...)
		return
	}
	w.step(StepPushes, StatusOK, "no push failed", "", lines...)
}

// hold is what the next push to k waits for, if one waits.
func (w *walk) hold(k registry.Key) *Hold {
	if wt, ok := w.Queue.Waiting(k); ok {
		h := &Hold{By: wt.Why, Attempt: wt.Attempt}
		if !wt.Until.IsZero() {
			u := wt.Until.UTC()
			h.Until = &u
		}
		return h
	}
	if last, ok := w.Delays.Pending(k); ok {
		u := w.Delays.Due(last).UTC()
		return &Hold{By: HoldDelay, Until: &u}
	}
	return nil
}

func holdText(now time.Time, h *Hold) string {
	at, until := "", ""
	if h.Until != nil {
		at = fmt.Sprintf("%s (in %s)", stamp(*h.Until), h.Until.Sub(now).Round(time.Second))
		until = " until " + at
	}
	switch h.By {
	case HoldDelay:
		return "delayed, as changes that are not new mail wait for a quiet moment (delay); due at the latest at " + at
	case apns.WaitPacing:
		return "held by pacing (apnsMinInterval)" + until
	case apns.WaitRetry:
		return fmt.Sprintf("to be retried%s, attempt %d so far", until, h.Attempt)
	case apns.WaitPaused:
		return "held while sending is paused"
	case apns.WaitInFlight:
		return "sent, waiting for Apple's answer"
	}
	return "queued, going out now"
}

// pushAdvice says whether the push p to one of user's devices failed and
// what to check.
func pushAdvice(p history.Push, user string) (string, bool) {
	switch apns.Outcome(p.Outcome) {
	case apns.Delivered, apns.DryRun, apns.Held:
		return "", false
	case apns.Removed:
		return "Apple says this device no longer takes pushes for the account (the app or account was removed): its registration was removed; the phone registers again when Mail connects", true
	case apns.Kept:
		return "Apple said this device's token was no longer valid, but the device registered again after that: its registration was kept, and the next push uses it", true
	case apns.Expired:
		return "the push expired before Apple took it: sending was paused, or retried for apnsExpiration", true
	case apns.Retrying:
		return "Apple or the network fails for now; xapsd retries", true
	}
	switch p.Reason {
	case "BadDeviceToken", "DeviceTokenNotForTopic":
		return "the token is for another APNs environment or topic: apnsEndpoint must be production for iOS Mail, and the credential's topic the one the phone registered with", true
	case "TopicDisallowed", "BadTopic", "MissingTopic":
		return "the credential may not push to its topic: check the certificate or keyFileTopic (docs/credentials.md)", true
	}
	return "Apple refused the push for the reason it gave; xapsd test-push " + user + " pushes now and shows Apple's answer", true
}

func statusText(s int) string {
	if s == 0 {
		return ""
	}
	return fmt.Sprint(s)
}

func events(evs []history.Event) []Event {
	out := []Event{}
	for _, e := range evs {
		out = append(out, Event{Time: e.Time.UTC(), Mailbox: e.Mailbox, Events: e.Events, More: e.More, Result: e.Result})
	}
	return out
}

func eventLine(now time.Time, user string, e Event) string {
	who := ""
	if user != "" {
		who = "for " + user + ": "
	}
	names := strings.Join(e.Events, ", ")
	if e.More > 0 {
		names += fmt.Sprintf(" and %d more", e.More)
	}
	return fmt.Sprintf("%s%s (%s ago) %s [%s]: %s", who, stamp(e.Time), ago(now, e.Time), e.Mailbox, names, e.Result)
}

// ShortToken shows a device token by its ends, as the log does above
// debug: enough to tell devices apart.
func ShortToken(t string) string {
	if len(t) <= 12 {
		return t
	}
	return t[:8] + "…" + t[len(t)-4:]
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func ago(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Minute).String()
	case d < 48*time.Hour:
		return fmt.Sprintf("%.0fh", d.Hours())
	}
	return fmt.Sprintf("%.0f days", d.Hours()/24)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
