package integration

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
)

// readmeLine is what the README's sample log promises of one line: its
// level, its message and which fields it has.
type readmeLine struct {
	level, msg string
	fields     []string
}

var (
	levelRE = regexp.MustCompile(`level=(\w+)`)
	msgRE   = regexp.MustCompile(`msg=("(?:[^"\\]|\\.)*"|\S+)`)
)

func parseLogLine(l string) readmeLine {
	var r readmeLine
	if m := levelRE.FindStringSubmatch(l); m != nil {
		r.level = m[1]
	}
	if m := msgRE.FindStringSubmatch(l); m != nil {
		r.msg = m[1]
	}
	for k := range fields(l) {
		if k != "time" && k != "level" && k != "msg" {
			r.fields = append(r.fields, k)
		}
	}
	slices.Sort(r.fields)
	return r
}

// readmeBlocks returns the code blocks of the README's "Try it" section.
func readmeBlocks(t *testing.T) []string {
	t.Helper()
	readme := string(mustRead(t, "../../README.md"))
	start := strings.Index(readme, "## Try it")
	end := strings.Index(readme, "## Test it")
	if start < 0 || end < start {
		t.Fatal("README.md has no Try it section")
	}
	return regexp.MustCompile("(?s)```[a-z]*\n(.*?)```").FindAllString(readme[start:end], -1)
}

func logLines(block string) []readmeLine {
	var out []readmeLine
	for _, l := range strings.Split(block, "\n") {
		// The README leaves out the time stamps.
		if i := strings.Index(l, "level="); i == 0 || (i > 0 && strings.HasPrefix(l, "time=")) {
			out = append(out, parseLogLine(l[i:]))
		}
	}
	return out
}

// The README's "Try it" does what it says: the dev config, its curl
// commands and test-push give exactly the log lines it shows, in order.
func TestReadmeTryIt(t *testing.T) {
	blocks := readmeBlocks(t)
	var curls [][2]string // path, body
	var wantRun, wantTest []readmeLine
	curlRE := regexp.MustCompile(`curl -i http://127\.0\.0\.1:11619(/\w+) -d '([^']*)'`)
	for _, b := range blocks {
		for _, m := range curlRE.FindAllStringSubmatch(b, -1) {
			curls = append(curls, [2]string{m[1], m[2]})
		}
		switch ls := logLines(b); {
		case len(ls) == 0:
		case wantRun == nil:
			wantRun = ls
		default:
			wantTest = ls
		}
	}
	if len(curls) != 3 || len(wantRun) == 0 || len(wantTest) == 0 {
		t.Fatalf("README: %d curl commands, %d + %d log lines", len(curls), len(wantRun), len(wantTest))
	}

	// The dev config as it is, its state in a temporary folder, in a
	// network namespace so that its fixed ports are free.
	dir := testutil.TempDir(t)
	cfg := filepath.Join(dir, "xapsd.yaml")
	os.WriteFile(cfg, mustRead(t, "../../configs/dev/xapsd.yaml"), 0o600)
	ns := newNetns(t)
	d := ns.startDaemon(t, cfg)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) { return ns.dial(network, addr) },
	}}
	for _, c := range curls {
		pushesBefore := strings.Count(d.log.String(), "msg=push ")
		resp, err := hc.Post("http://127.0.0.1:11619"+c[0], "application/x-www-form-urlencoded", strings.NewReader(c[1]))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("POST %s: %d", c[0], resp.StatusCode)
		}
		// New mail is pushed at once; as someone typing the next curl,
		// let that push be logged before the next request's line.
		if strings.Contains(c[1], "MessageNew") {
			d.waitCount("msg=push ", pushesBefore+1, 10*time.Second)
		}
	}
	d.waitCount("msg=push ", 2, 15*time.Second)
	got := logLines(d.log.String())
	compareLines(t, "the run", notifyBeforeItsPush(got), wantRun)

	// A line after the run's would show among test-push's, and one after
	// test-push's before the shutdown's: the shutdown is the later event.
	before := len(got)
	if code, out, errOut := run(t, "", "--config", cfg, "test-push", "alice@example.com"); code != 0 || !strings.Contains(out, "dry-run") {
		t.Errorf("test-push: %d %q %q", code, out, errOut)
	}
	d.waitCount(`msg="test push"`, 1, 10*time.Second)
	d.signal(syscall.SIGINT)
	<-d.done
	got = logLines(d.log.String())
	stop := slices.IndexFunc(got, func(l readmeLine) bool { return l.msg == `"shutting down"` })
	if stop < 0 {
		stop = len(got)
	}
	compareLines(t, "test-push", got[min(before, stop):stop], wantTest)
	if d.cmd.ProcessState.ExitCode() != 0 || !strings.Contains(d.log.String(), `msg="shutting down" component=daemon`) ||
		!strings.Contains(d.log.String(), `msg="xapsd stopped"`) {
		t.Errorf("Ctrl-C: exit %d", d.cmd.ProcessState.ExitCode())
	}
}

// notifyBeforeItsPush puts a /notify line back before the push lines it
// caused. The handler logs a /notify once the service has queued its push,
// and the sender, in its own goroutine, may log the push first; the README
// shows the causal order. Push lines with no /notify before them are such
// a case: the /notify line right after them moves in front.
func notifyBeforeItsPush(lines []readmeLine) []readmeLine {
	out := slices.Clone(lines)
	isPush := func(l readmeLine) bool { return l.msg == `"dry-run: would push"` || l.msg == "push" }
	for i := 0; i < len(out); i++ {
		if !isPush(out[i]) || (i > 0 && (isPush(out[i-1]) || out[i-1].msg == "notify")) {
			continue
		}
		j := i
		for j < len(out) && isPush(out[j]) {
			j++
		}
		if j < len(out) && out[j].msg == "notify" {
			notify := out[j]
			copy(out[i+1:j+1], out[i:j])
			out[i] = notify
		}
		i = j
	}
	return out
}

func TestNotifyBeforeItsPush(t *testing.T) {
	l := func(msg string) readmeLine { return readmeLine{msg: msg} }
	reg, note, dry, push := l("registered"), l("notify"), l(`"dry-run: would push"`), l("push")
	for _, tc := range []struct{ in, want []readmeLine }{
		{[]readmeLine{reg, note, dry, push, note, dry, push}, []readmeLine{reg, note, dry, push, note, dry, push}},
		{[]readmeLine{reg, dry, push, note, note, dry, push}, []readmeLine{reg, note, dry, push, note, dry, push}},
		{[]readmeLine{reg, note, note, dry, push, dry, push}, []readmeLine{reg, note, note, dry, push, dry, push}},
	} {
		got := notifyBeforeItsPush(tc.in)
		if !slices.EqualFunc(got, tc.want, func(a, b readmeLine) bool { return a.msg == b.msg }) {
			t.Errorf("notifyBeforeItsPush(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func compareLines(t *testing.T, what string, got, want []readmeLine) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d log lines, the README shows %d", what, len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		g, w := got[i], want[i]
		if g.level != w.level || g.msg != w.msg || !slices.Equal(g.fields, w.fields) {
			t.Errorf("%s, line %d: got %s %s %v, the README shows %s %s %v", what, i+1, g.level, g.msg, g.fields, w.level, w.msg, w.fields)
		}
	}
}
