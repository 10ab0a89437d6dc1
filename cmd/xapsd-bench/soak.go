package main

// The soak (make soak): the built daemon under mixed /register and /notify
// load for a fixed time while it is killed with SIGKILL, restarted
// gracefully, its disk fills up and Apple's stand-in drops connections,
// answers 503 and stalls, and clients without the plugin's secret hold
// more connections than its file limit leaves room for. At the end it
// checks what the daemon promised: every acknowledged registration is on
// disk with the mailboxes last acknowledged, no refused one is, every push
// whose /notify was answered was delivered, unless the process that
// answered was killed before it could send (pushes are acknowledged before
// they are sent, and a SIGKILL loses the queue by design), and no request
// with the secret took longer than a second or failed while the daemon
// ran. Any other loss fails the run.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/xapsd/xapsd/internal/filestore"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/statedir"
	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/noauth"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

const (
	soakWorkers     = 8
	soakKeysPerWork = 3000 // bounds the registry, and so the tmpfs it lives on
	faultCycle      = 12 * time.Second
	// The daemon runs with soakFileLimit descriptors, which leave it room
	// for 96 plugin connections, and soakAttackers clients without the
	// secret try to hold more than that the whole time.
	soakFileLimit = 256
	soakAttackers = 200
	soakSecret    = "5f1c0a9e7d3b2e4f6a8c0e2b4d6f8a0c"
	// slowAnswer is the longest a request with the secret may wait.
	slowAnswer = time.Second
)

// soakKey is one registration and what the daemon said about it. Each
// belongs to one worker, so no lock is needed.
type soakKey struct {
	user, account, token string
	acked                []string   // mailboxes of the last 200; nil: never acknowledged
	unknown              [][]string // lists sent after it whose answer never came
}

// due is a push the daemon owes: a /notify answered 200 at sent, by the
// process of generation gen.
type due struct {
	token string
	sent  time.Time
	gen   int64
}

type soakRun struct {
	bin, dir, addr, metricsAddr, caFile string

	mu      sync.Mutex
	err     error // what stopped the run early
	d       *daemon
	gen     atomic.Int64 // generation of the running process
	up      atomic.Bool
	killed  map[int64]bool // generations ended by SIGKILL
	peakRSS int            // KiB, over all processes
	exits   []int          // exit codes of graceful stops

	kills, graceful atomic.Int64
	diskFull        atomic.Int64 // windows
	diskFullNow     atomic.Bool
	fullRefused     atomic.Int64 // registrations refused during a window

	fault                 atomic.Int32 // faultNone...
	drops, errs5, stalled atomic.Int64
	delivMu               sync.Mutex
	delivered             map[string]time.Time // token -> arrival of its last 200

	regs, regOK, reg5xx, regOther atomic.Int64
	notifies, notifyOK            atomic.Int64

	stops       atomic.Int64 // kills and graceful stops begun
	attackConns int64        // connections the clients without the secret made
	slowMu      sync.Mutex
	slow        []string // the first requests with the secret slower than slowAnswer, or failed
	slowN       int
	slowest     time.Duration // of all requests with the secret that no stop cut
}

const (
	faultNone = iota
	faultDrop
	fault5xx
	faultStall
)

func runSoak(o options, length time.Duration) error {
	dir, err := os.MkdirTemp("", "xapsd-soak-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	s := &soakRun{bin: o.bin, dir: dir, killed: map[int64]bool{}, delivered: map[string]time.Time{}}

	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		return err
	}
	// The registry on a small tmpfs of its own, which the run fills up.
	canFill := os.Geteuid() == 0
	if canFill {
		if err := syscall.Mount("tmpfs", state, "tmpfs", 0, "size=64m,mode=0700"); err != nil {
			return fmt.Errorf("mount a tmpfs for the state folder: %w", err)
		}
		defer syscall.Unmount(state, syscall.MNT_DETACH)
	} else {
		fmt.Fprintln(os.Stderr, "xapsd-soak: NOT ROOT: the disk-full windows are SKIPPED (they need a tmpfs mount)")
	}

	apns, err := fakeapns.Start(fakeapns.Options{NoRecord: true, Responder: s.respond})
	if err != nil {
		return err
	}
	defer apns.Close()
	if err := os.WriteFile(filepath.Join(dir, "plugin.secret"), []byte(soakSecret+"\n"), 0o600); err != nil {
		return err
	}
	// The daemon under a small file limit, as a tight LimitNOFILE= gives.
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		return fmt.Errorf("the soak runs the daemon under prlimit (util-linux): %w", err)
	}
	s.bin = filepath.Join(dir, "xapsd-limited")
	if err := os.WriteFile(s.bin, fmt.Appendf(nil, "#!/bin/sh\nexec %s --nofile=%d:%d %s \"$@\"\n", prlimit, soakFileLimit, soakFileLimit, o.bin), 0o700); err != nil {
		return err
	}
	s.caFile = filepath.Join(dir, "apns-ca.pem")
	if err := apns.WriteCAFile(s.caFile); err != nil {
		return err
	}
	ca, err := testpki.NewCA("soak CA")
	if err != nil {
		return err
	}
	// Valid long enough that no expiry warning fills the log.
	leaf, err := ca.Issue(testpki.IssueOptions{UID: topic, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(90 * 24 * time.Hour), IsClient: true})
	if err != nil {
		return err
	}
	os.WriteFile(filepath.Join(dir, "push.pem"), leaf.CertPEM(), 0o600)
	os.WriteFile(filepath.Join(dir, "push.key"), leaf.KeyPEM(), 0o600)
	if s.addr, err = freeAddr(); err != nil {
		return err
	}
	if s.metricsAddr, err = freeAddr(); err != nil {
		return err
	}
	cfg := fmt.Sprintf("loglevel: warn\nlistenAddr: 127.0.0.1\nport: %s\ndatabaseFile: state/database.json\n"+
		"metricsListenAddr: %s\napnsEndpoint: %s\ncertificateFilePem: push.pem\ncertificateFilePemKey: push.key\n"+
		"apnsConcurrency: 200\ndelay: 1\ncheckInterval: 1\nregistryCompactAfter: 2000\npluginSecretFile: plugin.secret\n",
		s.addr[strings.LastIndexByte(s.addr, ':')+1:], s.metricsAddr, apns.URL)
	if err := os.WriteFile(filepath.Join(dir, "xapsd.yaml"), []byte(cfg), 0o600); err != nil {
		return err
	}
	if err := s.start(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "xapsd-soak: %s of load with kill -9, restarts, APNs faults, a full disk and %d clients without the secret; xapsd at %s, file limit %d\n",
		length, soakAttackers, s.addr, soakFileLimit)

	begin := time.Now()
	end := begin.Add(length)
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(3)
	go func() { defer bg.Done(); s.sampleRSS(stop) }()
	go func() { defer bg.Done(); s.faults(begin, stop) }()
	go func() { defer bg.Done(); s.chaos(length, canFill, stop) }()
	// Half announce a body they never send, a quarter say nothing, a
	// quarter send their headers a byte every half second; each
	// connects again 100 ms after it is closed (at once, 200 clients on
	// this two-core machine would test its CPU, not the daemon's
	// connections).
	flood := noauth.Start(s.addr, noauth.Options{Clients: soakAttackers, Pause: 100 * time.Millisecond,
		Kind: func(i int) noauth.Kind {
			return []noauth.Kind{noauth.AnnouncedBody, noauth.AnnouncedBody, noauth.Silent, noauth.SlowHeaders}[i%4]
		}})

	var workers sync.WaitGroup
	keys := make([][]*soakKey, soakWorkers)
	dues := make([][]due, soakWorkers)
	for w := range soakWorkers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			keys[w], dues[w] = s.work(w, end)
		}()
	}
	workers.Wait()
	close(stop)
	bg.Wait()
	flood.Stop()
	s.attackConns = flood.Conns()
	if err := s.failed(); err != nil {
		return err
	}

	// Let the daemon finish: Apple well again, the queue empty, then a
	// graceful stop and one more start for what it kept in
	// pending-pushes.json.
	s.fault.Store(faultNone)
	if !s.up.Load() {
		if err := s.start(); err != nil {
			return err
		}
	}
	for range 2 {
		if err := s.waitQueueEmpty(3 * time.Minute); err != nil {
			return err
		}
		s.stopGraceful()
		if err := s.start(); err != nil {
			return err
		}
	}
	s.stopGraceful()

	return s.report(time.Since(begin), slices.Concat(keys...), slices.Concat(dues...), filepath.Join(state, "database.json"))
}

func freeAddr() (string, error) {
	port, err := testutil.FreePort()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", port), nil
}

// abort records what stops the run; workers and chaos then wind down.
func (s *soakRun) abort(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
}

func (s *soakRun) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *soakRun) start() error {
	d, err := launch(s.bin, s.dir, s.addr, s.caFile)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.d = d
	s.mu.Unlock()
	s.gen.Add(1)
	s.up.Store(true)
	return nil
}

func (s *soakRun) kill() {
	s.up.Store(false)
	s.stops.Add(1)
	s.mu.Lock()
	d := s.d
	s.killed[s.gen.Load()] = true
	s.mu.Unlock()
	s.notePeak(d)
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
	s.kills.Add(1)
}

func (s *soakRun) stopGraceful() {
	s.up.Store(false)
	s.stops.Add(1)
	s.mu.Lock()
	d := s.d
	s.mu.Unlock()
	s.notePeak(d)
	code := d.stop()
	s.mu.Lock()
	s.exits = append(s.exits, code)
	s.mu.Unlock()
	s.graceful.Add(1)
}

func (s *soakRun) notePeak(d *daemon) {
	if _, hwm := d.memory(); hwm > 0 {
		s.mu.Lock()
		s.peakRSS = max(s.peakRSS, hwm)
		s.mu.Unlock()
	}
}

func (s *soakRun) sampleRSS(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(250 * time.Millisecond):
		}
		s.mu.Lock()
		d := s.d
		s.mu.Unlock()
		if s.up.Load() {
			s.notePeak(d)
		}
	}
}

// respond is Apple's stand-in, with the fault of the moment.
func (s *soakRun) respond(r fakeapns.Request) fakeapns.Response {
	var resp fakeapns.Response
	switch s.fault.Load() {
	case faultDrop:
		if rand.IntN(3) == 0 {
			s.drops.Add(1)
			return fakeapns.Response{Drop: true}
		}
	case fault5xx:
		if rand.IntN(2) == 0 {
			s.errs5.Add(1)
			return fakeapns.Response{Status: 503, Reason: "ServiceUnavailable"}
		}
	case faultStall:
		s.stalled.Add(1)
		resp.Delay = 3 * time.Second
	}
	// Accepted: Apple has the push, whether or not the answer reaches
	// the daemon.
	s.delivMu.Lock()
	s.delivered[r.Token] = r.Received
	s.delivMu.Unlock()
	return resp
}

// faults cycles through Apple's faults: 4 s well, 2 s dropped connections,
// 2 s well, 2 s of 503, 2 s of 3-second stalls.
func (s *soakRun) faults(begin time.Time, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(100 * time.Millisecond):
		}
		switch t := time.Since(begin) % faultCycle; {
		case t < 4*time.Second, t >= 6*time.Second && t < 8*time.Second:
			s.fault.Store(faultNone)
		case t < 6*time.Second:
			s.fault.Store(faultDrop)
		case t < 10*time.Second:
			s.fault.Store(fault5xx)
		default:
			s.fault.Store(faultStall)
		}
	}
}

// chaos kills the daemon (every third time gracefully) every length/6 to
// length/3, at most every 40 s, and fills the disk for a while at 30 % of
// the run and then every 150 s.
func (s *soakRun) chaos(length time.Duration, canFill bool, stop <-chan struct{}) {
	begin := time.Now()
	nextFull := begin.Add(length * 3 / 10)
	hold := min(8*time.Second, length/8)
	gap := func() time.Duration {
		lo, hi := min(length/6, 20*time.Second), min(length/3, 40*time.Second)
		return lo + rand.N(hi-lo+1)
	}
	nextKill := time.Now().Add(gap())
	for n := 1; ; {
		select {
		case <-stop:
			return
		case <-time.After(50 * time.Millisecond):
		}
		now := time.Now()
		if canFill && now.After(nextFull) {
			s.fillDisk(hold)
			nextFull = time.Now().Add(150 * time.Second)
		}
		if now.After(nextKill) {
			if n%3 == 0 {
				s.stopGraceful()
			} else {
				s.kill()
			}
			n++
			if err := s.start(); err != nil {
				s.abort(fmt.Errorf("restart: %w", err))
				return
			}
			nextKill = time.Now().Add(gap())
		}
	}
}

func (s *soakRun) fillDisk(hold time.Duration) {
	filler := filepath.Join(s.dir, "state", "filler")
	f, err := os.OpenFile(filler, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		s.abort(fmt.Errorf("fill the disk: %w", err))
		return
	}
	chunk := bytes.Repeat([]byte{'x'}, 64<<10)
	for _, n := range []int{64 << 10, 4096, 512, 1} {
		for {
			if _, err := f.Write(chunk[:n]); err != nil {
				break
			}
		}
	}
	f.Close()
	s.diskFull.Add(1)
	s.diskFullNow.Store(true)
	time.Sleep(hold)
	s.diskFullNow.Store(false)
	os.Remove(filler)
}

// timed sends one request with the secret and notes it when it took
// longer than slowAnswer, or failed while the daemon was neither killed
// nor stopped since stops was read (before the caller saw it up).
func (s *soakRun) timed(c *pluginConn, stops int64, path, body string) (int, error) {
	start := time.Now()
	st, err := c.post(path, body)
	took := time.Since(start)
	if s.stops.Load() != stops {
		return st, err // a stop or kill cut in: says nothing about the daemon's speed
	}
	s.slowMu.Lock()
	s.slowest = max(s.slowest, took)
	s.slowMu.Unlock()
	if err == nil && took <= slowAnswer {
		return st, err
	}
	what := fmt.Sprintf("%s %s after %v", time.Now().Format("15:04:05.000"), path, took.Round(time.Millisecond))
	if err != nil {
		what += fmt.Sprintf(" (%v)", err)
	}
	s.slowMu.Lock()
	s.slowN++
	if len(s.slow) < 10 {
		s.slow = append(s.slow, what)
	}
	s.slowMu.Unlock()
	return st, err
}

// work drives one worker's share of the load until end.
func (s *soakRun) work(w int, end time.Time) ([]*soakKey, []due) {
	c := newPluginConn(s.addr)
	c.auth = "Bearer " + soakSecret
	defer c.close()
	var keys []*soakKey
	var acked []*soakKey
	var dues []due
	var connStops int64 // stops begun before the connection was made
	for time.Now().Before(end) && s.failed() == nil {
		time.Sleep(2 * time.Millisecond)
		// Read before up: a stop begun after this shows in the count,
		// and its requests are not the daemon's to answer.
		stops := s.stops.Load()
		if !s.up.Load() {
			c.close()
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if stops != connStops {
			// The daemon was stopped and started again since this
			// connection was made: it is gone, as Dovecot would find.
			c.close()
			connStops = stops
		}
		gen := s.gen.Load()
		switch r := rand.IntN(100); {
		case r < 55 && len(acked) > 0:
			k := acked[rand.IntN(len(acked))]
			sent := time.Now()
			st, err := s.timed(c, stops, "/notify", fmt.Sprintf(`{"Username":"%s","Mailbox":"INBOX","Events":["MessageNew"]}`, k.user))
			s.notifies.Add(1)
			if err == nil && st == 200 {
				s.notifyOK.Add(1)
				dues = append(dues, due{token: k.token, sent: sent, gen: gen})
			}
		default:
			var k *soakKey
			if r < 80 && len(keys) < soakKeysPerWork || len(keys) == 0 {
				i := len(keys)
				k = &soakKey{user: fmt.Sprintf("w%d-u%d@example.com", w, i), account: fmt.Sprintf("ACC-%d-%d", w, i),
					token: fmt.Sprintf("%016X%016X%032X", w, i, rand.Uint64())}
				keys = append(keys, k)
			} else {
				k = keys[rand.IntN(len(keys))]
			}
			boxes := []string{"INBOX", fmt.Sprintf("Folder %d", rand.IntN(1000))}
			body := fmt.Sprintf(`{"ApsAccountId":"%s","ApsDeviceToken":"%s","ApsSubtopic":"com.apple.mobilemail","Username":"%s","Mailboxes":["%s","%s"]}`,
				k.account, k.token, k.user, boxes[0], boxes[1])
			st, err := s.timed(c, stops, "/register", body)
			s.regs.Add(1)
			switch {
			case err != nil:
				// The daemon died mid-request: stored or not.
				k.unknown = append(k.unknown, boxes)
				s.regOther.Add(1)
			case st == 200:
				if k.acked == nil {
					acked = append(acked, k)
				}
				k.acked, k.unknown = boxes, nil
				s.regOK.Add(1)
			case st >= 500:
				s.reg5xx.Add(1)
				if s.diskFullNow.Load() {
					s.fullRefused.Add(1)
				}
			default:
				s.regOther.Add(1)
				k.unknown = append(k.unknown, boxes)
			}
		}
	}
	return keys, dues
}

var queueRE = regexp.MustCompile(`(?m)^xapsd_apns_(queue_depth|in_flight) (\d+)`)

// waitQueueEmpty waits until the daemon has nothing left to push.
func (s *soakRun) waitQueueEmpty(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for quiet := 0; quiet < 3; {
		if time.Now().After(deadline) {
			return fmt.Errorf("the push queue did not empty within %s", limit)
		}
		time.Sleep(500 * time.Millisecond)
		resp, err := http.Get("http://" + s.metricsAddr + "/metrics")
		if err != nil {
			quiet = 0
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		busy := false
		for _, m := range queueRE.FindAllStringSubmatch(string(body), -1) {
			if m[2] != "0" {
				busy = true
			}
		}
		if busy {
			quiet = 0
		} else {
			quiet++
		}
	}
	return nil
}

func (s *soakRun) report(took time.Duration, keys []*soakKey, dues []due, db string) error {
	r, err := registry.Open(filestore.New(filestore.Options{Dir: statedir.New(db)}), registry.Options{MaxDevicesPerUser: 1 << 20})
	if err != nil {
		return fmt.Errorf("open the registry the daemon left: %w", err)
	}
	present := map[registry.Key][]string{}
	for _, g := range r.List("") {
		present[g.Key] = g.Mailboxes
	}
	r.Close()

	var acked, there, lost, wrong, refusedThere int
	for _, k := range keys {
		got, ok := present[registry.Key{User: k.user, AccountID: k.account, DeviceToken: k.token}]
		switch {
		case k.acked != nil:
			acked++
			if !ok {
				lost++
				continue
			}
			there++
			if !slices.Equal(got, k.acked) && !slices.ContainsFunc(k.unknown, func(b []string) bool { return slices.Equal(got, b) }) {
				wrong++
			}
		case ok && len(k.unknown) == 0:
			// Only refusals (500, 503): "not stored" must mean it.
			refusedThere++
		}
	}
	var delivered, killedUndelivered, undelivered int
	s.delivMu.Lock()
	for _, d := range dues {
		if at, ok := s.delivered[d.token]; ok && !at.Before(d.sent) {
			delivered++
		} else if s.killed[d.gen] {
			killedUndelivered++
		} else {
			undelivered++
		}
	}
	s.delivMu.Unlock()

	badExit := 0
	for _, c := range s.exits {
		if c != 0 {
			badExit++
		}
	}
	rows := [][2]string{
		{"length", fmt.Sprintf("%.0f s", took.Seconds())},
		{"/register", fmt.Sprintf("%d (200: %d; 500/503: %d, of them %d during full disk; cut by kill -9: %d)",
			s.regs.Load(), s.regOK.Load(), s.reg5xx.Load(), s.fullRefused.Load(), s.regOther.Load())},
		{"/notify", fmt.Sprintf("%d (200: %d)", s.notifies.Load(), s.notifyOK.Load())},
		{"kill -9 / graceful stops", fmt.Sprintf("%d / %d, the last 3 at the end (exit ≠ 0: %d)", s.kills.Load(), s.graceful.Load(), badExit)},
		{"disk-full windows", fmt.Sprintf("%d", s.diskFull.Load())},
		{"APNs faults", fmt.Sprintf("%d dropped connections, %d 503, %d stalled 3 s", s.drops.Load(), s.errs5.Load(), s.stalled.Load())},
		{"registrations acknowledged", fmt.Sprintf("%d; present %d; lost %d; with other mailboxes than acknowledged %d", acked, there, lost, wrong)},
		{"refused (5xx) but present", fmt.Sprintf("%d", refusedThere)},
		{"pushes due (/notify 200)", fmt.Sprintf("%d; delivered %d; lost %d; not sent because the process that took them was killed with -9 (not durable by design) %d",
			len(dues), delivered, undelivered, killedUndelivered)},
		{"peak RSS", fmt.Sprintf("%d MB", s.peakRSS>>10)},
		{"clients without the secret", fmt.Sprintf("%d, holding connections the whole run (%d connections made) against a file limit of %d", soakAttackers, s.attackConns, soakFileLimit)},
		{"requests with the secret slower than 1 s, or failed", fmt.Sprintf("%d (slowest %v)", s.slowN, s.slowest.Round(time.Millisecond))},
	}
	fmt.Printf("\n| soak | result |\n|---|---|\n")
	for _, row := range rows {
		fmt.Printf("| %s | %s |\n", row[0], row[1])
	}
	var problems []string
	if lost > 0 || wrong > 0 {
		problems = append(problems, fmt.Sprintf("%d acknowledged registrations lost, %d with other mailboxes", lost, wrong))
	}
	if refusedThere > 0 {
		problems = append(problems, fmt.Sprintf("%d refused registrations stored", refusedThere))
	}
	if undelivered > 0 {
		problems = append(problems, fmt.Sprintf("%d pushes due were not delivered", undelivered))
	}
	if badExit > 0 {
		problems = append(problems, fmt.Sprintf("%d graceful stops exited non-zero", badExit))
	}
	if s.slowN > 0 {
		problems = append(problems, fmt.Sprintf("%d requests with the secret took longer than %v or failed while clients without it held connections: %s",
			s.slowN, slowAnswer, strings.Join(s.slow, "; ")))
	}
	if acked == 0 || len(dues) == 0 || s.kills.Load() == 0 {
		problems = append(problems, "the run did not exercise the daemon (no acknowledged registration, push or kill)")
	}
	if len(problems) > 0 {
		s.mu.Lock()
		tail := s.d.tail()
		s.mu.Unlock()
		return errors.New("soak failed: " + strings.Join(problems, "; ") + "\nend of the xapsd log:\n" + tail)
	}
	return nil
}
