// Command xapsd-bench measures xapsd end to end on this machine: it starts
// the built daemon and an HTTP/2 TLS stand-in for APNs on loopback, drives
// /register and /notify like many Dovecot processes would (keep-alive
// HTTP/1.1 clients), and prints a table. `make bench` runs it; the figures
// go into docs/benchmarks.md. With -soak it runs the soak instead
// (soak.go, `make soak`; figures in docs/reliability.md).
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/pgtest"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

const topic = "com.apple.mail.XServer.11111111-2222-4333-8444-555555555555"

type options struct {
	bin         string
	devices     int
	regClients  int
	clients     int
	duration    time.Duration
	delays      []time.Duration
	rate        int
	rateDelay   time.Duration
	bigRegistry int
	// fewStreams is the stream limit of the second APNs stand-in, 0 for
	// none: its phase shows whether xapsd spreads its pushes over several
	// connections when one carries too few.
	fewStreams int
	// concurrency is the daemon's apnsConcurrency; 0 leaves the default.
	concurrency int
	logLevel    string
	metricsAddr string
	cpuProfile  string
	soak        time.Duration
	postgres    bool
	// databaseURL is the throw-away cluster's, with -postgres.
	databaseURL string
}

func main() {
	var o options
	var delays string
	flag.StringVar(&o.bin, "xapsd", "bin/xapsd", "xapsd binary to measure")
	flag.IntVar(&o.devices, "devices", 20000, "devices registered (one per user)")
	flag.IntVar(&o.regClients, "register-clients", 32, "concurrent clients for the registration phase")
	flag.IntVar(&o.clients, "clients", 64, "concurrent keep-alive clients for the notify throughput phase")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "length of each throughput phase")
	flag.StringVar(&delays, "apns-delays", "0ms,40ms", "APNs answer delays to measure throughput with")
	flag.IntVar(&o.rate, "rate", 2000, "requests per second for the fixed-rate latency phase")
	flag.DurationVar(&o.rateDelay, "rate-apns-delay", 40*time.Millisecond, "APNs answer delay in the fixed-rate phase")
	flag.IntVar(&o.fewStreams, "few-streams", 250, "concurrent streams the second APNs stand-in allows per connection (Go's default, a relay's or a throttled Apple's); its throughput phase runs at -rate-apns-delay with the default apnsConcurrency (0 skips it)")
	flag.IntVar(&o.concurrency, "apns-concurrency", 2000, "xapsd's apnsConcurrency in every phase but the -few-streams one")
	flag.IntVar(&o.bigRegistry, "registry-size", 1000000, "registrations in the load-time phase (0 skips it)")
	flag.StringVar(&o.logLevel, "loglevel", "info", "xapsd log level (info logs one line per push)")
	flag.StringVar(&o.metricsAddr, "metrics", "auto", "xapsd metricsListenAddr: auto (a free loopback port), off, or host:port (to take profiles from /debug/pprof/ too)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the load generator and the APNs stand-in (this process) to `file`")
	flag.DurationVar(&o.soak, "soak", 0, "instead of measuring, run the soak for this long: load with kill -9, restarts, APNs faults, a full disk and clients without the plugin's secret; fails on any loss or slow request (make soak)")
	flag.BoolVar(&o.postgres, "postgres", false, "keep the registry in a throw-away PostgreSQL cluster (databaseURL) instead of the files, and also measure what only several daemons have")
	flag.Parse()
	if o.soak > 0 {
		if err := runSoak(o, o.soak); err != nil {
			fail("%v", err)
		}
		return
	}
	for _, d := range strings.Split(delays, ",") {
		v, err := time.ParseDuration(strings.TrimSpace(d))
		if err != nil {
			fail("bad -apns-delays: %v", err)
		}
		o.delays = append(o.delays, v)
	}
	if o.metricsAddr == "auto" {
		port, err := testutil.FreePort()
		if err != nil {
			fail("%v", err)
		}
		o.metricsAddr = fmt.Sprintf("127.0.0.1:%d", port)
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			fail("%v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fail("%v", err)
		}
		defer pprof.StopCPUProfile()
	}
	if o.postgres {
		pg, err := pgtest.Start(pgtest.Options{})
		if err != nil {
			fail("start PostgreSQL: %v", err)
		}
		defer pg.Close()
		o.databaseURL = pg.URL
	}
	if err := run(o); err != nil {
		fail("%v", err)
	}
}

func fail(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "xapsd-bench: "+f+"\n", a...)
	os.Exit(1)
}

type row struct{ name, value, note string }

func run(o options) error {
	dir, err := os.MkdirTemp("", "xapsd-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	var delay atomic.Int64
	apns, err := fakeapns.Start(fakeapns.Options{
		Responder: func(fakeapns.Request) fakeapns.Response {
			return fakeapns.Response{Delay: time.Duration(delay.Load())}
		},
		NoRecord: true,
	})
	if err != nil {
		return fmt.Errorf("start APNs stand-in: %w", err)
	}
	defer apns.Close()
	caFile := filepath.Join(dir, "apns-ca.pem")
	if err := apns.WriteCAFile(caFile); err != nil {
		return err
	}
	ca, err := testpki.NewCA("bench CA")
	if err != nil {
		return err
	}
	leaf, err := ca.Issue(testpki.IssueOptions{UID: topic, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsClient: true})
	if err != nil {
		return err
	}
	os.WriteFile(filepath.Join(dir, "push.pem"), leaf.CertPEM(), 0o600)
	os.WriteFile(filepath.Join(dir, "push.key"), leaf.KeyPEM(), 0o600)

	var rows []row
	add := func(name, value, note string) {
		rows = append(rows, row{name, value, note})
		fmt.Fprintf(os.Stderr, "  %-48s %s %s\n", name, value, note)
	}

	d, err := startDaemon(o, dir, apns.URL, caFile)
	if err != nil {
		return err
	}
	defer d.stop()
	fmt.Fprintf(os.Stderr, "xapsd-bench: %d CPUs, %s, xapsd at %s, APNs stand-in at %s\n", runtime.NumCPU(), runtime.Version(), d.addr, apns.URL)

	// Registrations: distinct devices, each acknowledged only after fsync.
	regStart := time.Now()
	regs, lat, errs := drive(d.addr, o.regClients, func(i int) bool { return i < o.devices }, func(i int) (string, string) {
		return "/register", registerBody(i)
	})
	elapsed := time.Since(regStart)
	if errs > 0 {
		return fmt.Errorf("%d registrations failed", errs)
	}
	add(fmt.Sprintf("/register, %d clients", o.regClients), fmt.Sprintf("%.0f/s", float64(regs)/elapsed.Seconds()),
		fmt.Sprintf("(median %s, p99 %s; %d devices)", pct(lat, 50), pct(lat, 99), regs))
	if o.databaseURL != "" {
		if err := measureFollow(o, dir, apns.URL, caFile, d, add); err != nil {
			return err
		}
	}

	for _, dl := range o.delays {
		delay.Store(int64(dl))
		throughput(o, d, apns, fmt.Sprintf("pushes/s end to end, APNs delay %s", dl), add)
	}

	delay.Store(int64(o.rateDelay))
	// Start the fixed-rate phase with the generator's garbage from the
	// throughput phases collected, not during it.
	runtime.GC()
	hBefore := notifyHistogram(o.metricsAddr)
	before, cpuD := apns.Count(), d.cpu()
	lat, errs = fixedRate(d.addr, o.rate, o.duration, o.devices)
	cpuPerPush := perPush(d.cpu()-cpuD, apns.Count()-before)
	server := ""
	if hBefore != nil {
		// The daemon's own view, from its histogram: where the tail is.
		server = "; inside xapsd p99 " + histogramP99(hBefore, notifyHistogram(o.metricsAddr))
	}
	add(fmt.Sprintf("/notify latency at %d/s, APNs delay %s", o.rate, o.rateDelay), "p99 "+pct(lat, 99),
		fmt.Sprintf("(median %s, max %s, %d errors%s; CPU per push: xapsd %s)", pct(lat, 50), pct(lat, 100), errs, server, cpuPerPush))
	waitQuiet(apns)
	if code := d.stop(); code != 0 {
		return fmt.Errorf("xapsd exited %d:\n%s", code, d.tail())
	}
	if o.fewStreams > 0 {
		if err := measureFewStreams(o, dir, add); err != nil {
			return err
		}
	}

	if o.bigRegistry > 0 && o.databaseURL != "" {
		if err := measurePostgresLoad(o, dir, apns.URL, caFile, leaf, add); err != nil {
			return err
		}
	} else if o.bigRegistry > 0 {
		loadDir := filepath.Join(dir, "big")
		os.MkdirAll(filepath.Join(loadDir, "state"), 0o700)
		size, err := writeBigRegistry(filepath.Join(loadDir, "state", "database.json"), o.bigRegistry)
		if err != nil {
			return err
		}
		if err := measureStart(o, loadDir, apns.URL, caFile, leaf, fmt.Sprintf("start with %d registrations", o.bigRegistry),
			fmt.Sprintf(", file %d MB", size>>20), add); err != nil {
			return err
		}
	}

	fmt.Printf("\n| measure | result | detail |\n|---|---|---|\n")
	for _, r := range rows {
		fmt.Printf("| %s | %s | %s |\n", r.name, r.value, r.note)
	}
	return nil
}

// throughput drives /notify from o.clients clients for o.duration and
// adds what APNs received per second, with the daemon's CPU per push.
func throughput(o options, d *daemon, apns *fakeapns.Server, name string, add func(name, value, note string)) {
	before := apns.Count()
	cpuD, cpuB := d.cpu(), selfCPU()
	start := time.Now()
	end := start.Add(o.duration)
	n, lat, errs := drive(d.addr, o.clients, func(int) bool { return time.Now().Before(end) }, func(i int) (string, string) {
		return "/notify", notifyBody(i % o.devices)
	})
	// Pushes still queued when the clients stop are not counted: this
	// is what the daemon sustained while being driven.
	el := time.Since(start)
	pushes := apns.Count() - before
	// CPU time per push is steadier than throughput on a shared VM.
	add(name, fmt.Sprintf("%.0f/s", float64(pushes)/el.Seconds()),
		fmt.Sprintf("(/notify %.0f/s, median %s, p99 %s, %d errors; CPU per push: xapsd %s, load generator and stand-in %s; APNs connections so far: %d)",
			float64(n)/el.Seconds(), pct(lat, 50), pct(lat, 99), errs, perPush(d.cpu()-cpuD, pushes), perPush(selfCPU()-cpuB, pushes), apns.Connections()))
	waitQuiet(apns)
}

// perPush divides CPU time by the pushes it bought.
func perPush(cpu time.Duration, pushes int64) string {
	return fmtDur(cpu / time.Duration(max(pushes, 1)))
}

// measureFewStreams restarts the daemon (same registrations) against a
// stand-in that allows o.fewStreams streams per connection, answering
// after o.rateDelay, and measures throughput as against the first. One
// connection carries at most fewStreams/delay pushes a second there. The
// daemon has its default apnsConcurrency (1000), as most have: with it,
// a daemon that keeps one connection is capped there. A second of load
// first lets the daemon open the connections it wants, as the earlier
// phases left the first stand-in's connection open.
func measureFewStreams(o options, dir string, add func(name, value, note string)) error {
	apns, err := fakeapns.Start(fakeapns.Options{
		Responder:            func(fakeapns.Request) fakeapns.Response { return fakeapns.Response{Delay: o.rateDelay} },
		NoRecord:             true,
		MaxConcurrentStreams: o.fewStreams,
	})
	if err != nil {
		return fmt.Errorf("start APNs stand-in with %d streams: %w", o.fewStreams, err)
	}
	defer apns.Close()
	caFile := filepath.Join(dir, "apns-few-ca.pem")
	if err := apns.WriteCAFile(caFile); err != nil {
		return err
	}
	o.concurrency = 0
	d, err := startDaemon(o, dir, apns.URL, caFile)
	if err != nil {
		return err
	}
	defer d.stop()
	warm := o
	warm.duration = time.Second
	throughput(warm, d, apns, "(warm-up)", func(string, string, string) {})
	throughput(o, d, apns, fmt.Sprintf("pushes/s end to end, APNs delay %s, %d streams, default apnsConcurrency", o.rateDelay, o.fewStreams), add)
	if code := d.stop(); code != 0 {
		return fmt.Errorf("xapsd exited %d:\n%s", code, d.tail())
	}
	return nil
}

func registerBody(i int) string {
	return fmt.Sprintf(`{"ApsAccountId":"ACC-%08d","ApsDeviceToken":"%064X","ApsSubtopic":"com.apple.mobilemail","Username":"user%d@example.com","Mailboxes": ["INBOX"]}`, i, i, i)
}

func notifyBody(i int) string {
	return fmt.Sprintf(`{"Username":"user%d@example.com","Mailbox":"INBOX","Events": ["MessageNew"]}`, i)
}

// drive sends requests from clients concurrent keep-alive clients, the
// i-th made by req(i), for as long as more(i) says, and returns how many
// were sent, their latencies and how many failed.
func drive(addr string, clients int, more func(i int) bool, req func(int) (string, string)) (int, []time.Duration, int) {
	var next, sent, errs atomic.Int64
	lats := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newPluginConn(addr)
			defer c.close()
			for {
				i := int(next.Add(1)) - 1
				if !more(i) {
					return
				}
				path, body := req(i)
				t0 := time.Now()
				st, err := c.post(path, body)
				lats[w] = append(lats[w], time.Since(t0))
				sent.Add(1)
				if err != nil || st != 200 {
					errs.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return int(sent.Load()), slices.Concat(lats...), int(errs.Load())
}

// fixedRate sends rate requests per second on a schedule, whatever the
// answers do, and measures each from its scheduled time so that a stall
// shows up in the latency instead of lowering the rate.
func fixedRate(addr string, rate int, d time.Duration, devices int) ([]time.Duration, int) {
	// At most 256 requests in flight; like net/http's idle pool, the
	// connection used last is used next, so a steady rate keeps a few
	// connections busy instead of cycling through all of them.
	conns := &connPool{addr: addr, slots: make(chan struct{}, 256)}
	total := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	lats := make([]time.Duration, total)
	var errs atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := range total {
		at := start.Add(time.Duration(i) * interval)
		if w := time.Until(at); w > 0 {
			time.Sleep(w)
		}
		c := conns.get()
		wg.Add(1)
		go func() {
			defer func() { conns.put(c); wg.Done() }()
			st, err := c.post("/notify", notifyBody(i%devices))
			lats[i] = time.Since(at)
			if err != nil || st != 200 {
				errs.Add(1)
			}
		}()
	}
	wg.Wait()
	conns.close()
	return lats, int(errs.Load())
}

func waitQuiet(apns *fakeapns.Server) {
	last := apns.Count()
	for {
		time.Sleep(300 * time.Millisecond)
		n := apns.Count()
		if n == last {
			return
		}
		last = n
	}
}

func pct(l []time.Duration, p int) string {
	if len(l) == 0 {
		return "-"
	}
	s := slices.Clone(l)
	slices.Sort(s)
	i := min(len(s)-1, (len(s)*p)/100)
	if p == 100 {
		i = len(s) - 1
	}
	return fmtDur(s[i])
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

// writeBigRegistry writes a snapshot in xapsd's own layout with n
// registrations, each with a distinct user, account and token.
func writeBigRegistry(path string, n int) (int64, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	now := time.Now().UTC().Format(time.RFC3339Nano)
	fmt.Fprintf(w, "{\"Version\":2,\"Seq\":0,\"Registrations\":[\n")
	for i := range n {
		if i > 0 {
			w.WriteString(",\n")
		}
		fmt.Fprintf(w, `{"User":"user%d@example.com","AccountId":"%08X-CA09-4730-A419-793000CA982E","DeviceToken":"%064X","Mailboxes":["INBOX","Notes"],"RegistrationTime":"%s"}`, i, i, i, now)
	}
	w.WriteString("\n]}\n")
	if err := w.Flush(); err != nil {
		return 0, err
	}
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// measureStart starts a daemon on the registry prepared in loadDir (or
// in the database), with leaf as its credential, and adds its start time
// and memory to the table.
func measureStart(o options, loadDir, apnsURL, caFile string, leaf *testpki.Leaf, name, detail string, add func(name, value, note string)) error {
	os.MkdirAll(loadDir, 0o700)
	os.WriteFile(filepath.Join(loadDir, "push.pem"), leaf.CertPEM(), 0o600)
	os.WriteFile(filepath.Join(loadDir, "push.key"), leaf.KeyPEM(), 0o600)
	start := time.Now()
	d, err := startDaemon(o, loadDir, apnsURL, caFile)
	if err != nil {
		return err
	}
	ready := time.Since(start)
	loadMS := d.loadMillis()
	time.Sleep(2 * time.Second)
	rss, hwm := d.memory()
	add(name, fmt.Sprintf("%.2f s", ready.Seconds()), fmt.Sprintf("(registry load %d ms%s)", loadMS, detail))
	add("RSS after loading them", fmt.Sprintf("%d MB", rss>>10), fmt.Sprintf("(peak %d MB)", hwm>>10))
	if code := d.stop(); code != 0 {
		return fmt.Errorf("xapsd exited %d", code)
	}
	return nil
}

type daemon struct {
	cmd  *exec.Cmd
	addr string
	log  string // the daemon's stderr
	done chan struct{}
}

func startDaemon(o options, dir, apnsURL, caFile string) (*daemon, error) {
	port, err := testutil.FreePort()
	if err != nil {
		return nil, err
	}
	// apnsMinInterval 0: the throughput phases push each device several
	// times a second, and the figure is xapsd's capacity, not its pacing.
	cfg := fmt.Sprintf("loglevel: %s\nlistenAddr: 127.0.0.1\nport: %d\ndatabaseFile: state/database.json\n"+
		"metricsListenAddr: %q\napnsEndpoint: %s\ncertificateFilePem: push.pem\ncertificateFilePemKey: push.key\n"+
		"metricsPprof: %t\napnsMinInterval: 0\n", o.logLevel, port, o.metricsAddr, apnsURL, o.metricsAddr != "off")
	if o.concurrency > 0 {
		cfg += fmt.Sprintf("apnsConcurrency: %d\n", o.concurrency)
	}
	if o.databaseURL != "" {
		cfg += fmt.Sprintf("databaseURL: %q\n", o.databaseURL)
	}
	if err := os.WriteFile(filepath.Join(dir, "xapsd.yaml"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	return launch(o.bin, dir, fmt.Sprintf("127.0.0.1:%d", port), caFile)
}

// launch runs xapsd with dir/xapsd.yaml and waits until it answers on
// addr; its log goes to dir/xapsd.log.
func launch(bin, dir, addr, caFile string) (*daemon, error) {
	d := &daemon{addr: addr, log: filepath.Join(dir, "xapsd.log"), done: make(chan struct{})}
	d.cmd = exec.Command(bin, "--config", filepath.Join(dir, "xapsd.yaml"))
	d.cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+caFile)
	// The log (a line per push) goes to a file, as with supervisord's
	// stdout_logfile; piping it into this process would make reading it
	// part of the load generator's cost.
	logFile, err := os.OpenFile(d.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	d.cmd.Stdout, d.cmd.Stderr = io.Discard, logFile
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	err = testutil.WaitStarted(d.done, 60*time.Second, testutil.Answers(probe, "http://"+d.addr+"/healthz"))
	switch {
	case errors.Is(err, testutil.ErrExited):
		return nil, fmt.Errorf("xapsd exited during start:\n%s", d.tail())
	case err != nil:
		return nil, errors.New("xapsd did not start within 60 s")
	}
	return d, nil
}

// probe asks whether a daemon answers yet; one that listens but hangs
// must not hang the start.
var probe = &http.Client{Timeout: 2 * time.Second}

func (d *daemon) stop() int {
	testutil.StopProcess(d.cmd.Process, d.done, syscall.SIGTERM, 60*time.Second)
	return d.cmd.ProcessState.ExitCode()
}

// tail returns the end of the daemon's log, for error messages.
func (d *daemon) tail() string {
	f, err := os.Open(d.log)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 4000 {
		f.Seek(fi.Size()-4000, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

var loadRE = regexp.MustCompile(`registry loaded.* ms=(\d+)`)

func (d *daemon) loadMillis() int {
	// The line comes early in the start; the rest of the log can be big.
	f, err := os.Open(d.log)
	if err != nil {
		return -1
	}
	defer f.Close()
	head := make([]byte, 64<<10)
	n, _ := io.ReadFull(f, head)
	m := loadRE.FindSubmatch(head[:n])
	if m == nil {
		return -1
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v
}

var bucketRE = regexp.MustCompile(`^xapsd_pluginapi_request_duration_seconds_bucket\{path="/notify",le="([^"]+)"\} (\d+)`)

// notifyHistogram scrapes the daemon's cumulative /notify latency buckets
// (upper bound in seconds -> count), or nil without a metrics listener.
func notifyHistogram(addr string) map[string]int64 {
	if addr == "off" || addr == "" {
		return nil
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	h := map[string]int64{}
	for _, l := range strings.Split(string(body), "\n") {
		if m := bucketRE.FindStringSubmatch(l); m != nil {
			n, _ := strconv.ParseInt(m[2], 10, 64)
			h[m[1]] = n
		}
	}
	return h
}

// histogramP99 gives the bucket bound under which 99 % of the requests
// between two scrapes were answered.
func histogramP99(before, after map[string]int64) string {
	type b struct {
		le    float64
		label string
		n     int64
	}
	var bs []b
	for k, v := range after {
		le, err := strconv.ParseFloat(k, 64)
		if err != nil {
			continue
		}
		bs = append(bs, b{le, k, v - before[k]})
	}
	slices.SortFunc(bs, func(x, y b) int {
		switch {
		case x.le < y.le:
			return -1
		case x.le > y.le:
			return 1
		}
		return 0
	})
	if len(bs) == 0 || bs[len(bs)-1].n == 0 {
		return "-"
	}
	total := bs[len(bs)-1].n
	for _, x := range bs {
		if float64(x.n) >= 0.99*float64(total) {
			if x.label == "+Inf" {
				return "> 1 s"
			}
			return "≤ " + fmtDur(time.Duration(x.le*float64(time.Second)))
		}
	}
	return "-"
}

// cpu is the daemon's user+system CPU time so far.
func (d *daemon) cpu() time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// selfCPU is this process's CPU time: the load generator and the stand-in.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// memory reads VmRSS and VmHWM (peak) in KiB.
func (d *daemon) memory() (rss, hwm int) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		return -1, -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm
}
