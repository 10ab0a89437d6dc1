package apns

import (
	"sync"
	"time"

	"github.com/sideshow/apns2/token"
)

// TokenRenewInterval is how often APNs lets a provider renew its token:
// more often gives 429 TooManyProviderTokenUpdates.
const TokenRenewInterval = 20 * time.Minute

// Token is a provider token (a JWT signed with the .p8 key) and when it
// was last renewed because APNs refused it.
//
// apns2 renews the token after 50 minutes of local age, and APNs refuses
// one older than an hour by its own clock. On a host whose clock is
// behind Apple's that leaves a gap every hour (or, past an hour of skew,
// no working token at all): the refused token must be renewed then, but
// not more often than Apple allows.
type Token struct {
	tok *token.Token

	mu      sync.Mutex
	renewed time.Time // last renewal after a refusal
}

// NewToken wraps a token that has already signed its first bearer.
func NewToken(t *token.Token) *Token { return &Token{tok: t} }

// Same reports whether t signs with the same key, key id and team as
// this token: a reload of an unchanged .p8 can then keep it.
func (t *Token) Same(o *token.Token) bool {
	if t == nil || o == nil || t.tok.AuthKey == nil || o.AuthKey == nil {
		return false
	}
	return t.tok.KeyID == o.KeyID && t.tok.TeamID == o.TeamID && t.tok.AuthKey.Equal(o.AuthKey)
}

// renew is called when APNs answered ExpiredProviderToken to a push sent
// at sent. It makes a new token unless one was made after the push left
// (then the refusal is stale), and reports whether the next attempt has
// a token APNs has not refused yet. When a renewal is due but Apple's
// limit (TokenRenewInterval since the last token was made, by anyone)
// forbids it, next is the time it may be made.
func (t *Token) renew(sent, now time.Time) (fresh bool, next time.Time, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tok.Lock()
	defer t.tok.Unlock()
	if t.renewed.After(sent) || t.tok.IssuedAt > sent.Unix() {
		return true, time.Time{}, nil
	}
	// Apple counts every new token, not only ours: the one made at start
	// and apns2's 50-minute renewals too. So the limit runs from the
	// current token's issue time as well as from our last renewal.
	last := t.renewed
	if issued := time.Unix(t.tok.IssuedAt, 0); issued.After(last) {
		last = issued
	}
	if now.Sub(last) < TokenRenewInterval {
		return false, last.Add(TokenRenewInterval), nil
	}
	if _, err := t.tok.Generate(); err != nil {
		return false, time.Time{}, err
	}
	t.renewed = now
	return true, time.Time{}, nil
}
