package apns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/apns/transport"
	"github.com/xapsd/xapsd/internal/logging"
)

// reasonExpiredUnsent is the Result.Reason of a push that expired in the
// queue and was not sent.
const reasonExpiredUnsent = "expired while sending was paused"

// PushTimeout bounds one attempt, from sending to Apple's answer.
const PushTimeout = 30 * time.Second

// Payload is the body iOS Mail expects (docs/protocol.md#apns-payload), with the account id
// JSON-escaped as encoding/json escapes it. An account id is usually a
// UUID, which needs no escaping: it is copied as it is, without
// encoding/json's reflection (2 % of the daemon's CPU per push).
func Payload(accountID string) []byte {
	const prefix, suffix = `{"aps":{"account-id":`, "}}"
	if !plainJSONString(accountID) {
		id, _ := json.Marshal(accountID)
		return append(append(append(make([]byte, 0, len(prefix)+len(id)+len(suffix)), prefix...), id...), suffix...)
	}
	b := make([]byte, 0, len(prefix)+len(accountID)+2+len(suffix))
	b = append(b, prefix...)
	b = append(b, '"')
	b = append(b, accountID...)
	b = append(b, '"')
	return append(b, suffix...)
}

// plainJSONString: encoding/json writes s between quotes as it is
// (printable ASCII without the characters it escapes).
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20, c >= 0x7f, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// pushDeadlineSlack is how much longer than PushTimeout a push may take
// with a shared deadline.
const pushDeadlineSlack = time.Second

// pushDeadlines hands the pushes that start within the same
// pushDeadlineSlack one context, which ends PushTimeout plus
// pushDeadlineSlack after the first of them started: every push gets
// between PushTimeout and PushTimeout+pushDeadlineSlack. A context with
// its own timer per push (and the channel the HTTP/2 client asks of it)
// was 2 % of the daemon's CPU per push.
type pushDeadlines struct {
	mu     sync.Mutex
	ctx    context.Context
	cancel context.CancelFunc // kept, never called: the context ends at its deadline, after its last push
	until  time.Time          // when a push may no longer take ctx
}

// context returns the context for a push that starts now.
func (d *pushDeadlines) context() context.Context {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ctx == nil || !now.Before(d.until) {
		d.ctx, d.cancel = context.WithDeadline(context.Background(), now.Add(PushTimeout+pushDeadlineSlack))
		d.until = now.Add(pushDeadlineSlack)
	}
	return d.ctx
}

// verdict is what an answer asks of the sender beyond the outcome of its
// own push: attempt finds it, decide acts on it, and a probe's return
// reads refusedTest.
type verdict struct {
	// gone: the registration is dead (Unregistered), removed when it was
	// made before before; badToken: BadDeviceToken or
	// DeviceTokenNotForTopic, removed when the guard lets it.
	gone     bool
	before   time.Time
	badToken bool
	// pause: APNs refuses every push of client's credential, for this
	// reason; one push may try again at probeAt.
	pause   string
	probeAt time.Time
	client  *Client
	// refusedTest: a test push held or refused for the credential and
	// reported as failed; it must not end a pause the way an answer
	// about the device does.
	refusedTest bool
}

// attempt sends j once and says what came of it. It touches the client
// (the network, a provider token to renew) but none of the sender's
// rules: decide and the caller apply the answer to them.
func (s *Sender) attempt(ctx context.Context, j *job) (Result, verdict) {
	c := s.client.Load()
	j.attempt++
	if !s.opts.Now().Before(j.deadline) {
		// Kept past its expiration by a pause: Apple would drop it.
		return Result{Device: j.key, Attempt: j.attempt, Outcome: Expired, Reason: reasonExpiredUnsent}, verdict{}
	}
	n := &apns2.Notification{
		DeviceToken: j.key.DeviceToken,
		Topic:       c.Topic,
		PushType:    apns2.PushTypeBackground,
		Expiration:  j.deadline,
		Priority:    s.opts.Priority,
		Payload:     Payload(j.key.AccountID),
	}
	// A slow answer must not hold a worker for ever; Apple answers in
	// milliseconds when it answers at all. The sender's own pushes come
	// with a shared deadline (pushDeadlines) that already bounds them.
	if d, ok := ctx.Deadline(); !ok || time.Until(d) > PushTimeout+pushDeadlineSlack {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, PushTimeout)
		defer cancel()
	}
	start := time.Now()
	sent := s.opts.Now()
	resp, err := c.Transport.PushWithContext(ctx, n)
	res := Result{Device: j.key, Attempt: j.attempt, Duration: time.Since(start), Test: j.test}
	var v verdict
	var ue *transport.UnreachableError
	switch {
	case errors.As(err, &ue), errors.Is(err, transport.ErrHeldBack):
		res.Reason = transportReason(err)
		res.Outcome = Held
	case err != nil:
		res.Reason = transportReason(err)
		res.Outcome = Retrying
	default:
		res.Status, res.Reason, res.ApnsID = resp.StatusCode, resp.Reason, resp.ApnsID
		res.Outcome, v = s.classify(c, resp, sent)
		if c.DryRun && res.Outcome == Delivered {
			res.Outcome = DryRun // nothing reached Apple: not delivered
		}
	}
	now := s.opts.Now()
	switch {
	case (res.Outcome == Retrying || res.Outcome == Held) && j.test:
		// A test push is tried once, neither retried nor queued; the
		// reason says why it failed.
		v.refusedTest = res.Outcome == Held
		res.Outcome = Failed
	case res.Outcome == Retrying && !now.Add(s.opts.MinBackoff).Before(j.deadline):
		res.Outcome = Expired
	case res.Outcome == Held && !now.Before(j.deadline):
		res.Outcome = Expired
	}
	return res, v
}

// transportReason describes a failed request without its URL, which
// holds the whole device token.
func transportReason(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Op + " APNs: " + ue.Err.Error()
	}
	return err.Error()
}

// classify turns APNs' answer into the push's outcome and what it asks of
// the sender. A dead registration is Failed here; decide makes it Removed
// once it is gone.
func (s *Sender) classify(c *Client, resp *apns2.Response, sent time.Time) (Outcome, verdict) {
	switch {
	case resp.StatusCode == http.StatusOK:
		return Delivered, verdict{}
	case resp.StatusCode == http.StatusGone || resp.Reason == apns2.ReasonUnregistered || resp.Reason == apns2.ReasonExpiredToken:
		// The reason decides, whatever the status. APNs gives the last
		// time the token was valid, which apns2 truncates to seconds;
		// round up so that a device registered within that second still
		// counts as registered before it.
		before := time.Time{}
		if !resp.Timestamp.IsZero() {
			before = resp.Timestamp.Add(time.Second - time.Nanosecond)
		}
		return Failed, verdict{gone: true, before: before}
	case badTokenReason(resp.Reason):
		return Failed, verdict{badToken: true}
	case resp.Reason == apns2.ReasonExpiredProviderToken:
		return s.expiredToken(c, sent)
	case credentialRefusal(resp.StatusCode, resp.Reason):
		return Held, verdict{pause: refusal(resp.StatusCode, resp.Reason), probeAt: s.opts.Now().Add(s.opts.ProbeInterval), client: c}
	case resp.Reason == apns2.ReasonTooManyProviderTokenUpdates:
		s.logEveryMinute("token-updates", func(l logrus.FieldLogger) {
			l.Error("APNs refuses a provider token made too soon after the previous one (429 TooManyProviderTokenUpdates): " +
				"is the same .p8 key used by another program or another xapsd? Pushes are retried")
		})
		return Retrying, verdict{}
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return Retrying, verdict{}
	default:
		return Failed, verdict{}
	}
}

// expiredToken handles ExpiredProviderToken: the token is renewed at
// once, unless it was made less than TokenRenewInterval ago (APNs would
// refuse the new one); then sending pauses until it may be.
func (s *Sender) expiredToken(c *Client, sent time.Time) (Outcome, verdict) {
	s.logEveryMinute("expired-token", func(l logrus.FieldLogger) {
		l.Error("APNs says the provider token has expired (403 ExpiredProviderToken), although xapsd makes a new " +
			"one every 50 minutes: the host's clock is probably behind (check NTP, timedatectl). Making a new token")
	})
	probeAt := s.opts.Now().Add(s.opts.ProbeInterval)
	if c.token == nil {
		return Held, verdict{pause: refusal(http.StatusForbidden, apns2.ReasonExpiredProviderToken), probeAt: probeAt, client: c}
	}
	fresh, next, err := c.token.renew(sent, s.opts.Now())
	switch {
	case err != nil:
		return Held, verdict{pause: "cannot sign a new provider token: " + err.Error(), probeAt: probeAt, client: c}
	case fresh:
		return Retrying, verdict{}
	}
	return Held, verdict{pause: fmt.Sprintf("APNs refuses the provider token as expired (403 ExpiredProviderToken) and APNs allows a "+
		"new one only at %s, 20 minutes after the last was made: the host's clock is probably far behind (check NTP)", next.UTC().Format(time.RFC3339)),
		probeAt: next, client: c}
}

// decide acts on what an answer asks beyond its own push: it deletes a
// dead registration (for a bad token only when the guard lets it), which
// makes the outcome Removed (or Kept, for a device that registered again
// since), and pauses sending for a refused credential.
func (s *Sender) decide(ctx context.Context, res *Result, v verdict) {
	switch {
	case v.gone:
		res.Outcome = s.remove(ctx, res, v.before)
	case v.badToken:
		if !s.keepBadToken(res.Reason) {
			res.Outcome = s.remove(ctx, res, time.Time{})
		}
	}
	if v.pause != "" {
		s.pauseFor(v.client, v.pause, v.probeAt)
	}
}

// remove deletes the registration of res unless it was made after before
// (zero: whenever it was made), and says what became of the push:
// Removed, Kept for a device that registered again since before, or
// Failed when the removal could not be stored (the registration stays,
// and the answer to its next push removes it).
func (s *Sender) remove(ctx context.Context, res *Result, before time.Time) Outcome {
	if s.opts.Remover == nil {
		return Failed
	}
	kept, err := s.opts.Remover.Remove(ctx, res.Device, before)
	switch {
	case err != nil:
		s.log.WithError(err).WithField("token", logging.Mask(s.log, res.Device.DeviceToken)).WithField("user", res.Device.User).
			Warn("Apple says the device token is dead, but its registration could not be removed; the next push's answer removes it")
		return Failed
	case kept:
		return Kept
	}
	return Removed
}

// keepBadToken asks the guard whether a bad-token answer's registration
// must be kept, and warns when it says so.
func (s *Sender) keepBadToken(reason string) bool {
	s.mu.Lock()
	keep, warn := s.guard.keep(s.opts.Now())
	recent, bad := s.guard.window()
	s.mu.Unlock()
	if warn {
		s.log.WithFields(logrus.Fields{"reason": reason, "recent": recent, "bad": bad}).
			Errorf("APNs answers %s to most pushes, or just after the credential changed: the registrations are kept, "+
				"not deleted. Likely cause: the wrong APNs environment (apnsEndpoint: development, while iOS Mail "+
				"registers with production) or a credential for another environment or topic", reason)
	}
	return keep
}

// pauseFor pauses sending because APNs refused c, for why; probeAt is
// when one push may try again. An answer for credentials already
// replaced is ignored.
func (s *Sender) pauseFor(c *Client, why string, probeAt time.Time) {
	s.mu.Lock()
	if c != s.client.Load() {
		s.mu.Unlock()
		return
	}
	s.paused.start(why, probeAt, s.opts.Now())
	queued := s.queue.size()
	s.idle.Broadcast() // Drain does not wait for a queue that cannot move
	s.mu.Unlock()
	// Pushes waiting for a stream would be refused the same way.
	c.holdBack()
	s.logEveryMinute("pause", func(l logrus.FieldLogger) {
		l.WithField("queued", queued).Errorf("%s. Sending is paused and pushes are kept until they expire; "+
			"reload (SIGHUP) once fixed. One push is tried at %s", why, probeAt.UTC().Format(time.RFC3339))
	})
}

// refusal says why sending pauses for APNs' refusal, and what to do.
func refusal(status int, reason string) string {
	return fmt.Sprintf("APNs refuses every push with %d %s; %s", status, reason, refusalAdvice(reason))
}

// badTokenReason: APNs says the device token is not valid, for this
// environment or for this topic.
func badTokenReason(r string) bool {
	return r == apns2.ReasonBadDeviceToken || r == apns2.ReasonDeviceTokenNotForTopic
}

// credentialRefusal: APNs refuses every push of this credential or this
// kind of request the same way, so sending more is pointless until the
// configuration changes. A 403 always concerns the credential;
// ExpiredProviderToken is handled on its own.
func credentialRefusal(status int, reason string) bool {
	if status == http.StatusForbidden {
		return true
	}
	switch reason {
	case apns2.ReasonBadTopic, apns2.ReasonMissingTopic, apns2.ReasonTopicDisallowed,
		apns2.ReasonBadPriority, "InvalidPushType":
		return true
	}
	return false
}

// refusalAdvice says what to do about a refusal.
func refusalAdvice(reason string) string {
	switch reason {
	case apns2.ReasonBadCertificate, apns2.ReasonBadCertificateEnvironment, apns2.ReasonForbidden:
		return "check the certificate: revoked, not a push certificate, or for the other APNs environment (apnsEndpoint)"
	case apns2.ReasonInvalidProviderToken, apns2.ReasonMissingProviderToken, "UnrelatedKeyIdInToken", "BadEnvironmentKeyIdInToken":
		return "check keyFileKeyId, keyFileTeamId and the .p8 key: revoked, or restricted to another environment or topic"
	case apns2.ReasonBadTopic, apns2.ReasonMissingTopic, apns2.ReasonTopicDisallowed:
		return "the credential may not push to its topic: check keyFileTopic, or the key's or certificate's topics"
	case apns2.ReasonBadPriority:
		return "APNs wants another priority for background pushes: set apnsPriority: 5"
	case "InvalidPushType":
		return "APNs no longer accepts the background push type for this topic"
	}
	return "check the push credential"
}

func (s *Sender) report(res Result) {
	if s.opts.OnResult != nil {
		s.opts.OnResult(res)
	}
	fields := logrus.Fields{
		"token": logging.Mask(s.log, res.Device.DeviceToken),
		"user":  res.Device.User,
		// A string, not an Outcome: the text formatter writes strings
		// itself and anything else through fmt.Sprint (5 % of the
		// daemon's CPU per push, for the same text).
		"outcome": string(res.Outcome),
		"status":  res.Status,
		"attempt": res.Attempt,
		"ms":      res.Duration.Milliseconds(),
	}
	if res.Reason != "" {
		fields["reason"] = res.Reason
	}
	l := s.log.WithFields(fields)
	switch {
	case res.Test:
		// Asked for by an admin: every one is logged, as a test.
		l = l.WithField("test", true)
		if res.Outcome == Failed || res.Outcome == Removed || res.Outcome == Kept {
			l.Warn("test push not delivered")
		} else {
			l.Info("test push")
		}
	case res.Outcome == Held:
		// The pause says it once a minute; a line per push would flood.
		l.Debug("push held")
	case res.Outcome == Failed || res.Outcome == Kept || res.Outcome == Expired:
		l.Warn("push failed")
	case res.Outcome == Retrying:
		l.Info("push will be retried")
	default:
		l.Info("push")
	}
}
