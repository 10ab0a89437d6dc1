package apns

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"
)

// pusher sends a notification the way apns2.Client.PushWithContext does
// (the same request on the wire: method, path, headers and body; the same
// Response and errors) for less CPU per push. apns2 marshals every
// payload through encoding/json, parses the whole URL, canonicalizes each
// header name into a fresh map, goes through http.Client (redirect and
// timeout machinery xapsd does not use) and makes a JSON decoder for
// every answer, even Apple's empty 200. Here the constant header values
// are made once, the URL from the endpoint parsed once, the request goes
// straight to the pool, and only an answer with a body is decoded.
//
// It never follows a redirect, where http.Client would: APNs answers
// none, and a redirected push would be a new request to another host.
type pusher struct {
	rt       http.RoundTripper
	endpoint string   // as configured, for URLs that need parsing
	base     *url.URL // endpoint parsed; nil when it has a path or query
	token    *token.Token

	mu     sync.Mutex
	bearer string   // the token's last bearer
	auth   []string // "bearer " + bearer, the authorization header
}

func newPusher(endpoint string, rt http.RoundTripper, tok *token.Token) *pusher {
	p := &pusher{rt: rt, endpoint: endpoint, token: tok}
	u, err := url.Parse(endpoint)
	if err == nil && u.Scheme != "" && u.Host != "" && !strings.HasSuffix(u.Host, ":") && u.Path == "" &&
		u.RawPath == "" && u.Opaque == "" && u.User == nil && !u.ForceQuery && u.RawQuery == "" && u.Fragment == "" {
		p.base = u
	}
	return p
}

// Header values that are the same for every push, shared by the requests
// (the HTTP/2 client only reads them).
var (
	contentTypeJSON = []string{"application/json; charset=utf-8"}
	pushTypeValues  = map[apns2.EPushType][]string{
		apns2.PushTypeBackground: {string(apns2.PushTypeBackground)},
		apns2.PushTypeAlert:      {string(apns2.PushTypeAlert)},
	}
	priorityValues = map[int][]string{
		apns2.PriorityLow:  {strconv.Itoa(apns2.PriorityLow)},
		apns2.PriorityHigh: {strconv.Itoa(apns2.PriorityHigh)},
	}
)

// PushWithContext sends n and returns APNs' answer (Transport).
func (p *pusher) PushWithContext(ctx apns2.Context, n *apns2.Notification) (*apns2.Response, error) {
	payload, err := p.payload(n)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "", bytes.NewReader(payload))
	if err != nil {
		return nil, err
	}
	if err := p.url(req.URL, n.DeviceToken); err != nil {
		return nil, err
	}
	req.Host = req.URL.Host
	req.Header = p.header(n)
	resp, err := p.rt.RoundTrip(req)
	if err != nil {
		// What http.Client.Do returns (and what the sender's reasons
		// are made of): the error in a *url.Error, never the URL's token
		// in the reason (transportReason leaves it out).
		return nil, &url.Error{Op: "Post", URL: req.URL.String(), Err: err}
	}
	if resp.Body == nil {
		resp.Body = http.NoBody
	}
	defer resp.Body.Close()
	r := &apns2.Response{StatusCode: resp.StatusCode, ApnsID: first(resp.Header["Apns-Id"]), ApnsUniqueID: first(resp.Header["Apns-Unique-Id"])}
	if resp.ContentLength == 0 {
		// Apple's 200: no body to decode. (A server that sends data
		// after declaring none would make apns2 return the read's error;
		// that is the one answer read differently.)
		return r, nil
	}
	if err := json.NewDecoder(resp.Body).Decode(r); err != nil && err != io.EOF {
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

// url is the endpoint's /3/device/<token>. A device token is hex, and its
// URL is then the endpoint's with that path; anything else is parsed as
// apns2 does.
// It fills in u, the empty URL of a new request.
func (p *pusher) url(u *url.URL, deviceToken string) error {
	if p.base == nil || !plainPathSegment(deviceToken) {
		parsed, err := url.Parse(p.endpoint + "/3/device/" + deviceToken)
		if err != nil {
			return err
		}
		*u = *parsed
		return nil
	}
	*u = url.URL{Scheme: p.base.Scheme, Host: p.base.Host, Path: "/3/device/" + deviceToken}
	return nil
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

// header is the request's header, as apns2 sets it.
func (p *pusher) header(n *apns2.Notification) http.Header {
	h := make(http.Header, 7)
	if p.token != nil {
		h["Authorization"] = p.authorization()
	}
	h["Content-Type"] = contentTypeJSON
	if n.Topic != "" {
		h["Apns-Topic"] = []string{n.Topic}
	}
	if n.ApnsID != "" {
		h["Apns-Id"] = []string{n.ApnsID}
	}
	if n.CollapseID != "" {
		h["Apns-Collapse-Id"] = []string{n.CollapseID}
	}
	if n.Priority > 0 {
		if v, ok := priorityValues[n.Priority]; ok {
			h["Apns-Priority"] = v
		} else {
			h["Apns-Priority"] = []string{strconv.Itoa(n.Priority)}
		}
	}
	if n.Expiration.After(time.Unix(0, 0)) {
		h["Apns-Expiration"] = []string{strconv.FormatInt(n.Expiration.Unix(), 10)}
	}
	pushType := n.PushType
	if pushType == "" {
		pushType = apns2.PushTypeAlert
	}
	if v, ok := pushTypeValues[pushType]; ok {
		h["Apns-Push-Type"] = v
	} else {
		h["Apns-Push-Type"] = []string{string(pushType)}
	}
	return h
}

// authorization is the authorization header for the token's current
// bearer, renewed when it has expired as apns2 renews it; the header
// value is made again only when the bearer changed.
func (p *pusher) authorization() []string {
	bearer := p.token.GenerateIfExpired()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.auth == nil || bearer != p.bearer {
		p.bearer, p.auth = bearer, []string{"bearer " + bearer}
	}
	return p.auth
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// The pusher replaces apns2.Client and must keep its signature.
var _ Transport = (*pusher)(nil)
