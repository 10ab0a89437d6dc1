// Package ctl is the admin channel of a running xapsd: a unix socket in
// the state folder, mode 0600, that the `xapsd devices`, `xapsd test-push`,
// `xapsd diagnose`, `xapsd import` and `xapsd export` commands talk to. Going through the daemon, never
// around it, keeps the registry's journal and memory in step; the socket's
// mode keeps it to the user xapsd runs as (and root).
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/xapsd/xapsd/internal/apns"
	"github.com/xapsd/xapsd/internal/diagnose"
	"github.com/xapsd/xapsd/internal/filestore"
	"github.com/xapsd/xapsd/internal/registry"
)

// Registry is what the admin commands need of the registry.
type Registry interface {
	List(user string) []registry.Registration
	RemoveMatching(ctx context.Context, user, id string) ([]registry.Registration, error)
	Import(ctx context.Context, regs []registry.Registration) (int, error)
}

// Pusher sends one push now and reports Apple's answer.
type Pusher interface {
	PushNow(ctx context.Context, k registry.Key) apns.Result
}

// Diagnoser walks the chain from delivery to phone for one user
// (diagnose.Sources).
type Diagnoser interface {
	Diagnose(ctx context.Context, user string) diagnose.Report
}

// Device is one registration as the admin commands show it.
type Device struct {
	User        string    `json:"user"`
	AccountID   string    `json:"accountId"`
	DeviceToken string    `json:"deviceToken"`
	Mailboxes   []string  `json:"mailboxes"`
	Registered  time.Time `json:"registered"`
}

// PushResult is Apple's answer for one device.
type PushResult struct {
	Device
	Outcome string `json:"outcome"`
	Status  int    `json:"status"`
	Reason  string `json:"reason,omitempty"`
	ApnsID  string `json:"apnsId,omitempty"`
	Millis  int64  `json:"ms"`
}

func toDevice(g registry.Registration) Device {
	return Device{User: g.User, AccountID: g.AccountID, DeviceToken: g.DeviceToken, Mailboxes: g.Mailboxes, Registered: g.Registered}
}

// Server serves the admin socket.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Listen creates the socket (replacing a stale one) with mode 0600.
func Listen(path string, reg Registry, push Pusher, diag Diagnoser) (*Server, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("admin socket %s: another xapsd is running with this state folder", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	h := &handler{reg: reg, push: push, diag: diag}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /devices", h.list)
	mux.HandleFunc("POST /devices/remove", h.remove)
	mux.HandleFunc("POST /test-push", h.testPush)
	mux.HandleFunc("GET /diagnose", h.diagnose)
	mux.HandleFunc("POST /import", h.importFile)
	mux.HandleFunc("GET /export", h.export)
	return &Server{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}, nil
}

// Serve blocks until Shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops serving and removes the socket.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	os.Remove(s.ln.Addr().String())
	return err
}

type handler struct {
	reg  Registry
	push Pusher
	diag Diagnoser
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

type errorBody struct {
	Error string `json:"error"`
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	out := []Device{}
	for _, g := range h.reg.List(r.URL.Query().Get("user")) {
		out = append(out, toDevice(g))
	}
	writeJSON(w, http.StatusOK, out)
}

type removeRequest struct {
	User string `json:"user"`
	ID   string `json:"id"` // account id or device token; empty: all of the user's
}

func (h *handler) remove(w http.ResponseWriter, r *http.Request) {
	var req removeRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.User == "" {
		writeJSON(w, http.StatusBadRequest, errorBody{"want {\"user\": …, \"id\": …}"})
		return
	}
	removed, err := h.reg.RemoveMatching(r.Context(), req.User, req.ID)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, errorBody{err.Error()})
		return
	}
	out := []Device{}
	for _, g := range removed {
		out = append(out, toDevice(g))
	}
	writeJSON(w, http.StatusOK, out)
}

type userRequest struct {
	User string `json:"user"`
}

func (h *handler) testPush(w http.ResponseWriter, r *http.Request) {
	var req userRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.User == "" {
		writeJSON(w, http.StatusBadRequest, errorBody{"want {\"user\": …}"})
		return
	}
	out := []PushResult{}
	for _, g := range h.reg.List(req.User) {
		res := h.push.PushNow(r.Context(), g.Key)
		out = append(out, PushResult{Device: toDevice(g), Outcome: string(res.Outcome), Status: res.Status,
			Reason: res.Reason, ApnsID: res.ApnsID, Millis: res.Duration.Milliseconds()})
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) diagnose(w http.ResponseWriter, r *http.Request) {
	user := r.URL.Query().Get("user")
	if user == "" {
		writeJSON(w, http.StatusBadRequest, errorBody{"want ?user=…"})
		return
	}
	writeJSON(w, http.StatusOK, h.diag.Diagnose(r.Context(), user))
}

// export writes every registration in the registry file format.
func (h *handler) export(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	filestore.Export(w, h.reg.List(""))
}

type importResult struct {
	Found    int `json:"found"`
	Imported int `json:"imported"`
}

func (h *handler) importFile(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(io.LimitReader(r.Body, 4<<30))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{err.Error()})
		return
	}
	regs, err := filestore.ParseFile(data)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{"not a xapsd database: " + err.Error()})
		return
	}
	n, err := h.reg.Import(r.Context(), regs)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, errorBody{fmt.Sprintf("imported %d, then: %v", n, err)})
		return
	}
	writeJSON(w, http.StatusOK, importResult{Found: len(regs), Imported: n})
}
