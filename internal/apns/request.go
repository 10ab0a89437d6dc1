package apns

import (
	"bytes"
	"encoding/json"
	"io"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"

	"github.com/xapsd/xapsd/internal/apns/transport"
)

// pusher sends a notification the way apns2.Client.PushWithContext does
// (the same request on the wire: method, path, headers and body; the same
// Response and errors) for less CPU per push. apns2 marshals every
// payload through encoding/json, parses the whole URL, canonicalizes each
// header name into a fresh map, goes through http.Client (redirect and
// timeout machinery xapsd does not use) and makes a JSON decoder for
// every answer, even Apple's empty 200. Here the request is the
// transport's own (no http.Request, URL or header map), its constant
// values made once, and only an answer with a body is decoded.
//
// It never follows a redirect, where http.Client would: APNs answers
// none, and a redirected push would be a new request to another host.
type pusher struct {
	pool     *transport.Pool
	endpoint string   // as configured, for URLs that need parsing
	base     *url.URL // endpoint parsed; nil when it has a path or query
	token    *token.Token

	mu     sync.Mutex
	bearer string // the token's last bearer
	auth   string // "bearer " + bearer, the authorization header
}

func newPusher(endpoint string, pool *transport.Pool, tok *token.Token) *pusher {
	p := &pusher{pool: pool, endpoint: endpoint, token: tok}
	u, err := url.Parse(endpoint)
	if err == nil && u.Scheme != "" && u.Host != "" && !strings.HasSuffix(u.Host, ":") && u.Path == "" &&
		u.RawPath == "" && u.Opaque == "" && u.User == nil && !u.ForceQuery && u.RawQuery == "" && u.Fragment == "" {
		p.base = u
	}
	return p
}

// PushWithContext sends n and returns APNs' answer (Transport).
func (p *pusher) PushWithContext(ctx apns2.Context, n *apns2.Notification) (*apns2.Response, error) {
	payload, err := p.payload(n)
	if err != nil {
		return nil, err
	}
	req := &transport.Request{Body: payload}
	scheme, err := p.target(req, n.DeviceToken)
	if err != nil {
		return nil, err
	}
	p.header(req, n)
	resp, err := p.pool.Push(ctx, req)
	if err != nil {
		// What http.Client.Do returns (and what the sender's reasons
		// are made of): the error in a *url.Error, never the URL's token
		// in the reason (transportReason leaves it out).
		return nil, &url.Error{Op: "Post", URL: scheme + "://" + req.Authority + req.Path, Err: err}
	}
	r := &apns2.Response{StatusCode: resp.Status, ApnsID: resp.Get("apns-id"), ApnsUniqueID: resp.Get("apns-unique-id")}
	if len(resp.Body) == 0 {
		// Apple's 200: no body to decode.
		return r, nil
	}
	if err := json.NewDecoder(bytes.NewReader(resp.Body)).Decode(r); err != nil && err != io.EOF {
		return &apns2.Response{}, err
	}
	return r, nil
}

// payload is the request body: a []byte payload as it is (Payload makes
// it compact and with HTML characters escaped, which is what apns2's
// json.Marshal would make of it), anything else as apns2 marshals it.
func (p *pusher) payload(n *apns2.Notification) ([]byte, error) {
	if b, ok := n.Payload.([]byte); ok {
		return b, nil
	}
	return json.Marshal(n)
}

// target sets where the request goes, the endpoint's /3/device/<token>,
// and says the endpoint's scheme. A device token is hex, and its path is
// then the endpoint's with that path; anything else is parsed as apns2
// does.
func (p *pusher) target(req *transport.Request, deviceToken string) (string, error) {
	if p.base == nil || !plainPathSegment(deviceToken) {
		u, err := url.Parse(p.endpoint + "/3/device/" + deviceToken)
		if err != nil {
			return "", err
		}
		req.Authority, req.Path = u.Host, u.RequestURI()
		return u.Scheme, nil
	}
	req.Authority, req.Path = p.base.Host, "/3/device/"+deviceToken
	return p.base.Scheme, nil
}

// plainPathSegment: s is a path segment that needs no escaping.
func plainPathSegment(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// header adds the request's header fields, as apns2 sets them.
func (p *pusher) header(req *transport.Request, n *apns2.Notification) {
	if p.token != nil {
		req.Add("authorization", p.authorization())
	}
	req.Add("content-type", "application/json; charset=utf-8")
	if n.Topic != "" {
		req.Add("apns-topic", n.Topic)
	}
	if n.ApnsID != "" {
		req.Fields = append(req.Fields, transport.Field{Name: "apns-id", Value: n.ApnsID, Unique: true})
	}
	if n.CollapseID != "" {
		req.Add("apns-collapse-id", n.CollapseID)
	}
	if n.Priority > 0 {
		req.Add("apns-priority", priorityValue(n.Priority))
	}
	if n.Expiration.After(time.Unix(0, 0)) {
		req.Add("apns-expiration", strconv.FormatInt(n.Expiration.Unix(), 10))
	}
	pushType := n.PushType
	if pushType == "" {
		pushType = apns2.PushTypeAlert
	}
	req.Add("apns-push-type", string(pushType))
}

// priorityValue is the apns-priority header's value; Apple's two are
// made once.
func priorityValue(pr int) string {
	switch pr {
	case apns2.PriorityLow:
		return "5"
	case apns2.PriorityHigh:
		return "10"
	}
	return strconv.Itoa(pr)
}

// authorization is the authorization header for the token's current
// bearer, renewed when it has expired as apns2 renews it; the header
// value is made again only when the bearer changed.
func (p *pusher) authorization() string {
	bearer := p.token.GenerateIfExpired()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.auth == "" || bearer != p.bearer {
		p.bearer, p.auth = bearer, "bearer "+bearer
	}
	return p.auth
}

// The pusher replaces apns2.Client and must keep its signature.
var _ Transport = (*pusher)(nil)
