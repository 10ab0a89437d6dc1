package apns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
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
// JSON-escaped.
func Payload(accountID string) []byte {
	id, _ := json.Marshal(accountID)
	b := make([]byte, 0, len(id)+24)
	b = append(b, `{"aps":{"account-id":`...)
	b = append(b, id...)
	return append(b, "}}"...)
}

func (s *Sender) attempt(ctx context.Context, j *job) Result {
	c := s.client.Load()
	j.attempt++
	if !s.opts.Now().Before(j.deadline) {
		// Kept past its expiration by a pause: Apple would drop it.
		res := Result{Device: j.key, Attempt: j.attempt, Outcome: Expired, Reason: reasonExpiredUnsent}
		s.report(res)
		return res
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
	// milliseconds when it answers at all.
	ctx, cancel := context.WithTimeout(ctx, PushTimeout)
	defer cancel()
	start := time.Now()
	sent := s.opts.Now()
	resp, err := c.Transport.PushWithContext(ctx, n)
	res := Result{Device: j.key, Attempt: j.attempt, Duration: time.Since(start), Test: j.test}
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
		res.Outcome = s.classify(c, j, resp, sent)
		if c.DryRun && res.Outcome == Delivered {
			res.Outcome = DryRun // nothing reached Apple: not delivered
		}
	}
	now := s.opts.Now()
	switch {
	case (res.Outcome == Retrying || res.Outcome == Held) && j.test:
		// A test push is tried once, neither retried nor queued; the
		// reason says why it failed.
		res.refused = res.Outcome == Held
		res.Outcome = Failed
	case res.Outcome == Retrying && !now.Add(s.opts.MinBackoff).Before(j.deadline):
		res.Outcome = Expired
	case res.Outcome == Held && !now.Before(j.deadline):
		res.Outcome = Expired
	}
	s.report(res)
	return res
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

func (s *Sender) classify(c *Client, j *job, resp *apns2.Response, sent time.Time) Outcome {
	switch {
	case resp.StatusCode == http.StatusOK:
		return Delivered
	case resp.StatusCode == http.StatusGone || resp.Reason == apns2.ReasonUnregistered || resp.Reason == apns2.ReasonExpiredToken:
		// The reason decides, whatever the status. APNs gives the last
		// time the token was valid, which apns2 truncates to seconds;
		// round up so that a device registered within that second still
		// counts as registered before it.
		before := time.Time{}
		if !resp.Timestamp.IsZero() {
			before = resp.Timestamp.Add(time.Second - time.Nanosecond)
		}
		if s.opts.Remover != nil && s.opts.Remover.Remove(j.key, before) {
			return Removed
		}
		return Failed
	case badTokenReason(resp.Reason):
		if s.keepBadToken(resp.Reason) {
			return Failed
		}
		if s.opts.Remover != nil && s.opts.Remover.Remove(j.key, time.Time{}) {
			return Removed
		}
		return Failed
	case resp.Reason == apns2.ReasonExpiredProviderToken:
		return s.expiredToken(c, sent)
	case credentialRefusal(resp.StatusCode, resp.Reason):
		s.pauseFor(c, resp.StatusCode, resp.Reason, s.opts.Now().Add(s.opts.ProbeInterval))
		return Held
	case resp.Reason == apns2.ReasonTooManyProviderTokenUpdates:
		s.logEveryMinute("token-updates", func(l logrus.FieldLogger) {
			l.Error("APNs refuses a provider token made too soon after the previous one (429 TooManyProviderTokenUpdates): " +
				"is the same .p8 key used by another program or another xapsd? Pushes are retried")
		})
		return Retrying
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return Retrying
	default:
		return Failed
	}
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

// pauseFor pauses sending because APNs refused c; probeAt is when one
// push may try again. An answer for credentials already replaced is
// ignored.
func (s *Sender) pauseFor(c *Client, status int, reason string, probeAt time.Time) {
	why := fmt.Sprintf("APNs refuses every push with %d %s; %s", status, reason, refusalAdvice(reason))
	s.pauseWith(c, why, probeAt)
}

func (s *Sender) pauseWith(c *Client, why string, probeAt time.Time) {
	s.mu.Lock()
	if c != s.client.Load() {
		s.mu.Unlock()
		return
	}
	if !s.pause.on {
		s.pause.since = s.opts.Now()
	}
	s.pause.on, s.pause.reason = true, why
	if probeAt.After(s.pause.probeAt) {
		s.pause.probeAt = probeAt
	}
	queued := len(s.queued)
	s.idle.Broadcast() // Drain does not wait for a queue that cannot move
	s.mu.Unlock()
	// Pushes waiting for a stream would be refused the same way.
	c.holdBack()
	s.logEveryMinute("pause", func(l logrus.FieldLogger) {
		l.WithField("queued", queued).Errorf("%s. Sending is paused and pushes are kept until they expire; "+
			"reload (SIGHUP) once fixed. One push is tried at %s", why, probeAt.UTC().Format(time.RFC3339))
	})
}

// expiredToken handles ExpiredProviderToken: the token is renewed at
// once, unless it was made less than TokenRenewInterval ago (APNs would
// refuse the new one); then sending pauses until it may be.
func (s *Sender) expiredToken(c *Client, sent time.Time) Outcome {
	s.logEveryMinute("expired-token", func(l logrus.FieldLogger) {
		l.Error("APNs says the provider token has expired (403 ExpiredProviderToken), although xapsd makes a new " +
			"one every 50 minutes: the host's clock is probably behind (check NTP, timedatectl). Making a new token")
	})
	if c.token == nil {
		s.pauseFor(c, http.StatusForbidden, apns2.ReasonExpiredProviderToken, s.opts.Now().Add(s.opts.ProbeInterval))
		return Held
	}
	fresh, next, err := c.token.renew(sent, s.opts.Now())
	switch {
	case err != nil:
		s.pauseWith(c, "cannot sign a new provider token: "+err.Error(), s.opts.Now().Add(s.opts.ProbeInterval))
		return Held
	case fresh:
		return Retrying
	}
	s.pauseWith(c, fmt.Sprintf("APNs refuses the provider token as expired (403 ExpiredProviderToken) and APNs allows a "+
		"new one only at %s, 20 minutes after the last was made: the host's clock is probably far behind (check NTP)", next.UTC().Format(time.RFC3339)), next)
	return Held
}

// keepBadToken adds a BadDeviceToken answer to the window and says
// whether the registration must be kept: when such answers are most of
// the recent ones, or the credential changed a short while ago, the
// configuration is wrong rather than the devices.
func (s *Sender) keepBadToken(reason string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addAnswerLocked(true)
	now := s.opts.Now()
	keep := now.Sub(s.changedAt) < s.opts.TrustAfterChange || 2*s.badCount > s.answerCount
	switch {
	case !keep:
		s.guardLogged = time.Time{}
	case s.guardLogged.IsZero() || now.Sub(s.guardLogged) >= time.Hour:
		s.guardLogged = now
		s.log.WithFields(logrus.Fields{"reason": reason, "recent": s.answerCount, "bad": s.badCount}).
			Errorf("APNs answers %s to most pushes, or just after the credential changed: the registrations are kept, "+
				"not deleted. Likely cause: the wrong APNs environment (apnsEndpoint: development, while iOS Mail "+
				"registers with production) or a credential for another environment or topic", reason)
	}
	return keep
}

func (s *Sender) addAnswerLocked(bad bool) {
	if s.answerCount == guardWindow {
		if s.answers[s.answerNext] {
			s.badCount--
		}
	} else {
		s.answerCount++
	}
	s.answers[s.answerNext] = bad
	if bad {
		s.badCount++
	}
	s.answerNext = (s.answerNext + 1) % guardWindow
}

func (s *Sender) report(res Result) {
	if s.opts.OnResult != nil {
		s.opts.OnResult(res)
	}
	fields := logrus.Fields{
		"token":   logging.Mask(s.log, res.Device.DeviceToken),
		"user":    res.Device.User,
		"outcome": res.Outcome,
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
		if res.Outcome == Failed || res.Outcome == Removed {
			l.Warn("test push not delivered")
		} else {
			l.Info("test push")
		}
	case res.Outcome == Held:
		// The pause says it once a minute; a line per push would flood.
		l.Debug("push held")
	case res.Outcome == Failed || res.Outcome == Expired:
		l.Warn("push failed")
	case res.Outcome == Retrying:
		l.Info("push will be retried")
	default:
		l.Info("push")
	}
}
