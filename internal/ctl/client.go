package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/xapsd/xapsd/internal/diagnose"
)

// Client talks to a running daemon's admin socket.
type Client struct {
	path string
	hc   *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{path: path, hc: &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

func (c *Client) call(method, path string, body io.Reader, out any) error {
	req, err := http.NewRequest(method, "http://xapsd"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach xapsd at %s (is it running, and are you its user or root?): %w", c.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("xapsd: %s", e.Error)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func jsonBody(v any) io.Reader {
	b, _ := json.Marshal(v)
	return bytes.NewReader(b)
}

// Devices lists the registrations of user, or everyone's.
func (c *Client) Devices(user string) ([]Device, error) {
	var out []Device
	err := c.call(http.MethodGet, "/devices?user="+url.QueryEscape(user), nil, &out)
	return out, err
}

// Remove deletes registrations of user matching id (account id or token;
// "" = all of them).
func (c *Client) Remove(user, id string) ([]Device, error) {
	var out []Device
	err := c.call(http.MethodPost, "/devices/remove", jsonBody(removeRequest{User: user, ID: id}), &out)
	return out, err
}

// TestPush pushes to every device of user now.
func (c *Client) TestPush(user string) ([]PushResult, error) {
	var out []PushResult
	err := c.call(http.MethodPost, "/test-push", jsonBody(userRequest{User: user}), &out)
	return out, err
}

// Diagnose asks the daemon where the chain from delivery to phone breaks
// for user.
func (c *Client) Diagnose(user string) (diagnose.Report, error) {
	var out diagnose.Report
	err := c.call(http.MethodGet, "/diagnose?user="+url.QueryEscape(user), nil, &out)
	return out, err
}

// Import sends a database file's content to be merged.
func (c *Client) Import(data []byte) (found, imported int, err error) {
	var out importResult
	err = c.call(http.MethodPost, "/import", bytes.NewReader(data), &out)
	return out.Found, out.Imported, err
}

// Export copies the running registry, in the registry file format, to w.
func (c *Client) Export(w io.Writer) error {
	resp, err := c.hc.Get("http://xapsd/export")
	if err != nil {
		return fmt.Errorf("cannot reach xapsd at %s (is it running, and are you its user or root?): %w", c.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("xapsd: export: %s", resp.Status)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}
