package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/ctl"
	"github.com/xapsd/xapsd/internal/diagnose"
)

func TestNormalizeArgsKeepsOldSingleDashFlags(t *testing.T) {
	in := []string{"-pass", "-configPath", "/etc/x", "-configName=mail", "-p", "--config", "f", "-version"}
	want := []string{"--pass", "--configPath", "/etc/x", "--configName=mail", "-p", "--config", "f", "-version"}
	if got := normalizeArgs(in); !slices.Equal(got, want) {
		t.Errorf("normalizeArgs = %v, want %v", got, want)
	}
}

func runMain(stdin string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Main(args, Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Version: "1.2.3"})
	return code, out.String(), errb.String()
}

func TestPassHashesOneLine(t *testing.T) {
	// sha256("secret")
	const want = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\n"
	for _, in := range []string{"secret\n", "secret\r\n", "secret", "secret\nignored\n"} {
		code, out, _ := runMain(in, "-pass")
		if code != 0 || out != want {
			t.Errorf("-pass with %q: %d %q", in, code, out)
		}
	}
	if code, _, errOut := runMain("\n", "-pass"); code == 0 || !strings.Contains(errOut, "empty") {
		t.Errorf("empty password: %d %q", code, errOut)
	}
}

func TestVersionAndFlagErrorsExitCodes(t *testing.T) {
	if code, out, _ := runMain("", "--version"); code != 0 || out != "xapsd 1.2.3\n" {
		t.Errorf("--version: %d %q", code, out)
	}
	if code, _, errOut := runMain("", "--no-such-flag"); code != 2 || !strings.Contains(errOut, "no-such-flag") {
		t.Errorf("unknown flag: %d %q", code, errOut)
	}
	if code, _, errOut := runMain("", "serve"); code != 2 || !strings.Contains(errOut, "serve") {
		t.Errorf("stray argument: %d %q", code, errOut)
	}
	if code, _, errOut := runMain("", "--config", "/nonexistent/xapsd.yaml"); code != 1 || !strings.Contains(errOut, "/nonexistent/xapsd.yaml") {
		t.Errorf("missing config: %d %q", code, errOut)
	}
	if code, _, errOut := runMain("", "-configPath", "/nonexistent", "-configName", "nope"); code != 1 || !strings.Contains(errOut, "/nonexistent/nope.yaml") {
		t.Errorf("config search: %d %q", code, errOut)
	}
}

// The help is asked for, so it goes to stdout with exit 0, like
// doveadm's and systemctl's; booleans show no "[=true|false]".
func TestHelpGoesToStdout(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"help", "help"}, {"--config", "/nonexistent.yaml", "--help"}} {
		code, out, errOut := runMain("", args...)
		if code != 0 || errOut != "" || !strings.HasPrefix(out, "Usage:") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
		for _, want := range []string{"devices list [USER]", "test-push USER", "--check-config ", "--json", "Exit codes:", "  2  wrong usage"} {
			if !strings.Contains(out, want) {
				t.Errorf("%v: help lacks %q", args, want)
			}
		}
		if strings.Contains(out, "[=") || strings.Contains(out, "true|false") {
			t.Errorf("%v: booleans shown with a value:\n%s", args, out)
		}
	}
}

func TestCommandHelpShowsEachCommandsUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"devices", "list", "--help"}, "Usage: xapsd [--config FILE] devices list [--json] [USER]"},
		{[]string{"help", "devices", "list"}, "Usage: xapsd [--config FILE] devices list [--json] [USER]"},
		{[]string{"-h", "devices", "remove"}, "Usage: xapsd [--config FILE] devices remove USER [ACCOUNT-ID|TOKEN]"},
		{[]string{"help", "test-push"}, "Usage: xapsd [--config FILE] test-push [--json] USER"},
		{[]string{"test-push", "alice", "--help"}, "Usage: xapsd [--config FILE] test-push [--json] USER"},
		{[]string{"help", "import"}, "Usage: xapsd [--config FILE] import FILE"},
		{[]string{"help", "devices"}, "devices remove USER"},
	} {
		code, out, errOut := runMain("", tc.args...)
		if code != 0 || errOut != "" || !strings.Contains(out, tc.want) || !strings.Contains(out, "Exit codes:") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %q", tc.args, code, out, errOut, tc.want)
		}
		if strings.Contains(out, "--pass") {
			t.Errorf("%v: a command's help lists options it does not take:\n%s", tc.args, out)
		}
	}
	if code, out, errOut := runMain("", "help", "nope"); code != 2 || out != "" || !strings.Contains(errOut, `unknown command "nope"`) {
		t.Errorf("help nope: %d %q %q", code, out, errOut)
	}
}

func TestUnknownOptionsSuggestTheRightOne(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-config", "/etc/xapsd/xapsd.yaml"}, "unknown option -config: long options take two dashes; did you mean --config?"},
		{[]string{"-config=/etc/xapsd/xapsd.yaml"}, "did you mean --config?"},
		{[]string{"-check-config"}, "did you mean --check-config?"},
		{[]string{"-version"}, "did you mean --version?"},
		{[]string{"-foreground"}, "unknown option -foreground: long options take two dashes, and there is no --foreground"},
		{[]string{"devices", "list", "-json"}, "did you mean --json?"},
		// Unknown long options go through the same suggester as the
		// single-dash ones, the commands and the configuration keys.
		{[]string{"--conifg", "x.yaml"}, "unknown option --conifg; did you mean --config?"},
		{[]string{"--conifg=x.yaml"}, "unknown option --conifg; did you mean --config?"},
		{[]string{"--check"}, "unknown option --check; did you mean --check-config?"},
		{[]string{"devices", "list", "--jsno"}, "unknown option --jsno; did you mean --json?"},
		{[]string{"--frobnicate"}, "unknown option --frobnicate (xapsd --help lists them)"},
		{[]string{"device", "list"}, `unknown command "device"; did you mean devices?`},
		{[]string{"devices", "lsit"}, `unknown command "devices lsit"; did you mean devices list?`},
		{[]string{"devices"}, "devices needs a subcommand"},
		{[]string{"devices", "remove"}, "devices remove: wrong number of arguments (usage: xapsd [--config FILE] devices remove USER [ACCOUNT-ID|TOKEN])"},
		{[]string{"test-push", "a", "b"}, "test-push: wrong number of arguments"},
		{[]string{"--json"}, "--json goes with devices list, test-push and diagnose"},
		{[]string{"import", "f", "--json"}, "--json goes with devices list, test-push and diagnose"},
		{[]string{"--quiet"}, "--quiet goes with --check-config"},
		{[]string{"--check-config", "devices", "list"}, "--check-config takes no command"},
	} {
		code, out, errOut := runMain("", tc.args...)
		if code != 2 || out != "" || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.args, code, out, errOut, tc.want)
		}
	}
	// A value that starts with a dash is a value, not an option.
	if code, _, errOut := runMain("", "--config", "-odd.yaml"); code != 1 || !strings.Contains(errOut, "-odd.yaml") {
		t.Errorf("--config -odd.yaml: %d %q", code, errOut)
	}
}

// fakeAdmin answers the admin commands from memory.
type fakeAdmin struct {
	devs    []ctl.Device
	results []ctl.PushResult
	report  diagnose.Report
}

func (f *fakeAdmin) Devices(user string) ([]ctl.Device, error) {
	var out []ctl.Device
	for _, d := range f.devs {
		if user == "" || d.User == user {
			out = append(out, d)
		}
	}
	return out, nil
}

func (f *fakeAdmin) Remove(user, id string) ([]ctl.Device, error) {
	var out []ctl.Device
	for _, d := range f.devs {
		if d.User == user && (id == "" || id == d.AccountID || id == d.DeviceToken) {
			out = append(out, d)
		}
	}
	return out, nil
}

func (f *fakeAdmin) TestPush(user string) ([]ctl.PushResult, error) {
	var out []ctl.PushResult
	for _, r := range f.results {
		if r.User == user {
			out = append(out, r)
		}
	}
	return out, nil
}

func (f *fakeAdmin) Diagnose(user string) (diagnose.Report, error) {
	r := f.report
	r.User = user
	return r, nil
}

func (f *fakeAdmin) Import([]byte) (int, int, error) { return 0, 0, nil }
func (f *fakeAdmin) Export(io.Writer) error          { return nil }

func runCommand(c adminClient, o options, name string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	env := Env{Stdout: &out, Stderr: &errb}
	for _, cmd := range commands() {
		if cmd.name == name {
			return cmd.run(env, c, &o, args), out.String(), errb.String()
		}
	}
	panic("no command " + name)
}

var registered = time.Date(2026, 5, 4, 3, 2, 1, 0, time.FixedZone("CEST", 2*3600))

func testAdmin() *fakeAdmin {
	dev := ctl.Device{User: "alice@example.com", AccountID: "ACC-1", DeviceToken: "aa11", Mailboxes: []string{"INBOX", "Notes"}, Registered: registered}
	return &fakeAdmin{devs: []ctl.Device{dev}, results: []ctl.PushResult{{Device: dev, Outcome: "dry-run", Status: 200, Millis: 1}}}
}

// Times are RFC 3339 in UTC, in the table as in --json, as in the log.
func TestDevicesListTimesAndJSON(t *testing.T) {
	code, out, _ := runCommand(testAdmin(), options{}, "devices list")
	if code != 0 || !strings.Contains(out, "2026-05-04T01:02:01Z") {
		t.Errorf("table: %d\n%s", code, out)
	}
	code, out, _ = runCommand(testAdmin(), options{json: true}, "devices list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 1 {
		t.Fatalf("--json: %d\n%s", code, out)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatal(err)
	}
	if got["user"] != "alice@example.com" || got["accountId"] != "ACC-1" || got["deviceToken"] != "aa11" ||
		got["registered"] != "2026-05-04T01:02:01Z" || len(got["mailboxes"].([]any)) != 2 {
		t.Errorf("--json object %v", got)
	}
	code, out, errOut := runCommand(testAdmin(), options{}, "devices list", "bob")
	if code != 0 || out != "" || !strings.Contains(errOut, `no device registered for "bob": check that the IMAP login name`) {
		t.Errorf("nobody: %d %q %q", code, out, errOut)
	}
}

// An empty registry is said on standard error, so that it does not read
// as a hang or a failure; standard output stays empty (no JSON lines
// with --json), as scripts expect of an empty list.
func TestDevicesListEmptyRegistrySaysSo(t *testing.T) {
	for _, o := range []options{{}, {json: true}} {
		code, out, errOut := runCommand(&fakeAdmin{}, o, "devices list")
		if code != 0 || out != "" || !strings.Contains(errOut, "no devices registered") {
			t.Errorf("json=%v: exit %d, stdout %q, stderr %q; want 0, nothing, and \"no devices registered\"", o.json, code, out, errOut)
		}
	}
}

// devices remove that matches nothing fails and says why, with the hint
// devices list gives.
func TestDevicesRemoveNothingMatched(t *testing.T) {
	code, out, errOut := runCommand(testAdmin(), options{}, "devices remove", "bob")
	if code != 1 || out != "" || !strings.Contains(errOut, `no device registered for "bob": check that the IMAP login name`) {
		t.Errorf("unknown user: %d %q %q", code, out, errOut)
	}
	code, out, errOut = runCommand(testAdmin(), options{}, "devices remove", "alice@example.com", "nope")
	if code != 1 || out != "" || !strings.Contains(errOut, `none of the 1 registration(s) of "alice@example.com" has the account id or device token "nope"; xapsd devices list alice@example.com shows them`) {
		t.Errorf("no match: %d %q %q", code, out, errOut)
	}
	code, out, _ = runCommand(testAdmin(), options{}, "devices remove", "alice@example.com", "ACC-1")
	if code != 0 || !strings.Contains(out, "removed 1 registration(s)") {
		t.Errorf("match: %d %q", code, out)
	}
}

func TestTestPushOutputAndExitCodes(t *testing.T) {
	code, out, errOut := runCommand(testAdmin(), options{}, "test-push", "bob")
	if code != 1 || !strings.Contains(errOut, `no device registered for "bob": check that the IMAP login name`) {
		t.Errorf("unknown user: %d %q %q", code, out, errOut)
	}
	// dry-run is not delivered, but it is what the admin asked for.
	code, out, _ = runCommand(testAdmin(), options{}, "test-push", "alice@example.com")
	if code != 0 || !strings.Contains(out, "dry-run") {
		t.Errorf("dry-run: %d %q", code, out)
	}
	a := testAdmin()
	a.results[0].Outcome, a.results[0].Status, a.results[0].Reason = "failed", 0, "dial tcp: connection refused"
	code, out, _ = runCommand(a, options{json: true}, "test-push", "alice@example.com")
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 1 {
		t.Fatalf("--json: %d %q %v", code, out, err)
	}
	if got["outcome"] != "failed" || got["reason"] != "dial tcp: connection refused" || got["registered"] != "2026-05-04T01:02:01Z" || got["deviceToken"] != "aa11" {
		t.Errorf("--json object %v", got)
	}
}

// Whatever the admin commands print comes from the network: a user or
// mailbox name with a terminal's control or format characters is printed
// escaped, in the table, in --json and in messages, never raw.
func TestAdminCommandsEscapeWhatTheyPrint(t *testing.T) {
	raw := []string{`\u0085`, `\u009b`, `\u2028`, `\u202e`, `\u200b`}
	for _, c := range raw {
		bad, _ := strconv.Unquote(`"` + c + `"`)
		user := "mal" + bad + "lory@example.com"
		dev := ctl.Device{User: user, AccountID: "ACC" + bad, DeviceToken: "AA11", Mailboxes: []string{"IN" + bad + "BOX"}, Registered: registered}
		a := &fakeAdmin{devs: []ctl.Device{dev}, results: []ctl.PushResult{{Device: dev, Outcome: "failed", Reason: "why" + bad}},
			report: diagnose.Report{Steps: []diagnose.Step{{Name: diagnose.StepRegistrations, Status: diagnose.StatusFail,
				Summary: "no device registered for " + user, Lines: []string{"IN" + bad + "BOX"}, Next: "ask " + user}},
				Verdict: diagnose.Verdict{Step: diagnose.StepRegistrations, Text: "nothing for " + user}}}
		for _, run := range []struct {
			name string
			o    options
			cmd  string
			args []string
		}{
			{"devices list", options{}, "devices list", nil},
			{"devices list --json", options{json: true}, "devices list", nil},
			{"devices remove", options{}, "devices remove", []string{user}},
			{"devices remove, no match", options{}, "devices remove", []string{user, "nope"}},
			{"test-push", options{}, "test-push", []string{user}},
			{"test-push --json", options{json: true}, "test-push", []string{user}},
			{"diagnose", options{}, "diagnose", []string{user}},
			{"diagnose --json", options{json: true}, "diagnose", []string{user}},
		} {
			_, out, errOut := runCommand(a, run.o, run.cmd, run.args...)
			if strings.Contains(out+errOut, bad) {
				t.Errorf("%s prints %s raw:\n%q\n%q", run.name, c, out, errOut)
			}
			if !strings.Contains(out+errOut, c) {
				t.Errorf("%s does not show %s escaped:\n%q\n%q", run.name, c, out, errOut)
			}
			if run.o.json {
				for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
					var got map[string]any
					if err := json.Unmarshal([]byte(l), &got); err != nil || got["user"] != user {
						t.Errorf("%s: the escaped JSON does not decode to the name: %v %v", run.name, got["user"], err)
					}
				}
			}
		}
	}
}

// The JSON escaper holds a character split across two writes until it is
// whole.
func TestJSONEscaperAcrossWrites(t *testing.T) {
	var b bytes.Buffer
	e := &jsonEscaper{w: &b}
	in := []byte(`{"u":"a` + "\u202e" + `é"}`)
	for i := range in {
		e.Write(in[i : i+1])
	}
	e.Close()
	if b.String() != `{"u":"a\u202eé"}` {
		t.Errorf("escaped %q", b.String())
	}
}

// A configuration with problems gets one header, the problems, and the
// warnings that may explain them (a misspelt key).
func TestConfigErrorsHaveOneHeader(t *testing.T) {
	p := filepath.Join(t.TempDir(), "xapsd.yaml")
	os.WriteFile(p, []byte("listenadr: 127.0.0.1\napnsEndpoint: prod\nmetricsListenAddr: 11621\n"), 0o600)
	code, out, errOut := runMain("", "--config", p, "--check-config")
	if code != 1 || out != "" {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
	want := "warning: line 1: unknown key \"listenadr\" ignored; did you mean listenAddr?\n" +
		"xapsd: config " + p + ": 2 problems:\n" +
		"  apnsEndpoint: prod: must be production, development, dry-run or an https://host[:port] URL; did you mean production?\n" +
		"  metricsListenAddr: 11621: is a port without an address: write 127.0.0.1:11621 (this host only) or :11621 (every interface); \"\" or off turns it off\n"
	if errOut != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", errOut, want)
	}
}

// An address that does not parse, does not resolve or is not this host's
// fails --check-config (exit 1, naming it), instead of passing a
// configuration the daemon then cannot start with.
func TestCheckConfigRefusesAddressesItCannotListenOn(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ listen, want string }{
		{"300.1.1.1", "listenAddr: 300.1.1.1: must be an IP address or host name"},
		{"192.0.2.1", "listenAddr: 192.0.2.1: is not an address of this host"},
		{"nosuchhost.invalid", "listenAddr: nosuchhost.invalid: cannot be resolved"},
	} {
		p := filepath.Join(dir, "xapsd.yaml")
		os.WriteFile(p, []byte("apnsEndpoint: dry-run\nallowUnauthenticated: true\nmetricsListenAddr: off\n"+
			"databaseFile: "+filepath.Join(dir, "state", "db.json")+"\nlistenAddr: "+tc.listen+"\n"), 0o600)
		code, _, errOut := runMain("", "--config", p, "--check-config")
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("listenAddr %s: exit %d, stderr %q; want 1 and %q", tc.listen, code, errOut, tc.want)
		}
	}
}

// diagnose prints each step, its lines and, for one that does not pass,
// what to check next, then the verdict; it exits 1 unless all is fine.
// --json is the report as one object.
func TestDiagnoseOutputAndExitCode(t *testing.T) {
	failing := diagnose.Report{
		Steps: []diagnose.Step{
			{Name: diagnose.StepDaemon, Status: diagnose.StatusOK, Summary: "credential usable", Lines: []string{"APNs: connected"}},
			{Name: diagnose.StepRegistrations, Status: diagnose.StatusFail, Summary: "no device registered for carol", Next: "check XAPPLEPUSHSERVICE"},
		},
		Verdict: diagnose.Verdict{Step: diagnose.StepRegistrations, Text: "no device registered for carol: check XAPPLEPUSHSERVICE"},
	}
	code, out, _ := runCommand(&fakeAdmin{report: failing}, options{}, "diagnose", "carol")
	for _, want := range []string{"[OK]   daemon: credential usable\n         APNs: connected\n",
		"[FAIL] registrations: no device registered for carol\n         next: check XAPPLEPUSHSERVICE\n",
		"verdict: registrations fails: no device registered for carol"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if code != 1 {
		t.Errorf("a failing step: exit %d, want 1", code)
	}
	fine := diagnose.Report{Verdict: diagnose.Verdict{OK: true, Text: diagnose.AllFine}}
	code, out, _ = runCommand(&fakeAdmin{report: fine}, options{json: true}, "diagnose", "alice")
	var got diagnose.Report
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 0 || got.User != "alice" || !got.Verdict.OK {
		t.Errorf("--json: exit %d, %v, %q", code, err, out)
	}
}
