package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/xapsd/xapsd/internal/ctl"
	"github.com/xapsd/xapsd/internal/diagnose"
)

// adminClient is what the commands need of the admin socket (ctl.Client).
type adminClient interface {
	Devices(user string) ([]ctl.Device, error)
	Remove(user, id string) ([]ctl.Device, error)
	TestPush(user string) ([]ctl.PushResult, error)
	Diagnose(user string) (diagnose.Report, error)
	Import(data []byte) (found, imported int, err error)
	Export(w io.Writer) error
}

const exitsSocket = "  1  the daemon cannot be reached (is it running, and are you its user or root?)\n  2  wrong arguments\n"

func commands() []command {
	return []command{
		{
			name: "devices list", args: "[USER]", max: 1, json: true,
			summary: "registered devices, of USER or of everyone",
			help: `Lists the devices registered with the running daemon, of USER or of
everyone: user name, account id, device token, when it registered (RFC 3339,
UTC) and the mailboxes it wants pushes for. USER is the Dovecot user name the
device registered under (after user_lookup). With --json, one JSON object per
device and line.`,
			exits: "  0  listed, also when no device is registered\n" + exitsSocket,
			run:   devicesList,
		},
		{
			name: "devices remove", args: "USER [ACCOUNT-ID|TOKEN]", min: 1, max: 2,
			summary: "remove USER's registrations (all, or the matching one)",
			help: `Removes USER's registrations from the running daemon: all of them, or the
one whose account id or device token is given, and lists what was removed.
The phone registers again the next time its Mail connects.`,
			exits: "  0  removed at least one\n  1  nothing matched, or the daemon cannot be reached\n  2  wrong arguments\n",
			run:   devicesRemove,
		},
		{
			name: "test-push", args: "USER", min: 1, max: 1, json: true,
			summary: "push to every device of USER now, once, and show Apple's answers",
			help: `Pushes to every device of USER now, through the running daemon, and shows
Apple's answer for each: the result (delivered, dry-run, removed or failed),
the HTTP status, Apple's reason, the apns-id and the time it took. Each push
is tried once and never retried, so a temporary failure shows as failed with
its reason. The daemon logs each one as "test push". With --json, one JSON
object per device and line.`,
			exits: "  0  every push was delivered (or logged, in dry-run mode)\n  1  a push was not delivered, USER has no device, or the daemon cannot be reached\n  2  wrong arguments\n",
			run:   testPush,
		},
		{
			name: "diagnose", args: "USER", min: 1, max: 1, json: true,
			summary: "walk the chain from delivery to USER's phones and say where it breaks",
			help: `Asks the running daemon, for USER, step by step: the daemon (push
credential and topic, days left, sending paused or not and why, APNs
reachable); USER's registrations (each device, token shortened, account id,
mailboxes, when it registered); the last /notify for USER, and for user names
that look like it (the same local part, another domain or none) that have no
device, the usual sign of an IMAP login and a delivery under different names;
per device the last push (time, outcome, Apple's reason) and what holds the
next one back (pacing, the delay, a retry, a pause). It ends with a verdict:
the first step that fails and what to check next, or that the server side
works and the phone's Mail settings are next. The daemon keeps the last few
events of its most recently active users in memory since it started. Nothing is
pushed; test-push does that. With --json, the whole report as one JSON object.`,
			exits: "  0  every step passes: the server side works\n  1  a step fails (the verdict names it), or the daemon cannot be reached\n  2  wrong arguments\n",
			run:   diagnoseUser,
		},
		{
			name: "import", args: "FILE", min: 1, max: 1,
			summary: "merge the registrations of another xapsd database.json",
			help: `Merges the registrations in FILE (a database.json of xapsd or of the old
xapsd) into the running daemon, keeping the newer of two copies of a
registration and skipping expired ones. Certificates are not imported.`,
			exits: "  0  read and merged\n  1  FILE cannot be read or is not a database, or the daemon cannot be reached\n  2  wrong arguments\n",
			run:   importFile,
		},
		{
			name: "export", args: "[FILE]", max: 1,
			summary: "write the registry in the database.json format",
			help: `Writes every registration of the running daemon in the database.json format
that xapsd reads as its databaseFile and that xapsd import takes: to standard
output, or to FILE, which is created with mode 0600 and never overwritten.
The way from a PostgreSQL registry (databaseURL) back to the files, or to
another server.`,
			exits: "  0  written\n  1  FILE exists or cannot be written, or the daemon cannot be reached\n  2  wrong arguments\n",
			run:   exportFile,
		},
	}
}

func exportFile(env Env, c adminClient, _ *options, args []string) int {
	var out io.Writer
	if len(args) == 0 {
		esc := &jsonEscaper{w: env.Stdout}
		defer esc.Close()
		out = esc
	} else {
		f, err := os.OpenFile(args[0], os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fail(env, err)
		}
		defer f.Close()
		out = f
	}
	if err := c.Export(out); err != nil {
		return fail(env, err)
	}
	return 0
}

func fail(env Env, err error) int {
	fmt.Fprintf(env.Stderr, "xapsd: %s\n", shown(err.Error()))
	return 1
}

// noDeviceHint is what every command says when a user has no device: the
// usual cause is a user name that differs between IMAP and delivery.
func noDeviceHint(user string) string {
	return fmt.Sprintf("no device registered for %q: check that the IMAP login name and the delivery user name are the same (auth_username_format, user_lookup)", user)
}

func devicesList(env Env, c adminClient, o *options, args []string) int {
	user := ""
	if len(args) == 1 {
		user = args[0]
	}
	devs, err := c.Devices(user)
	if err != nil {
		return fail(env, err)
	}
	if o.json {
		writeJSONLines(env.Stdout, devs, deviceJSON)
	} else {
		printDevices(env.Stdout, devs)
	}
	switch {
	case len(devs) == 0 && user != "":
		fmt.Fprintln(env.Stderr, noDeviceHint(user))
	case len(devs) == 0:
		// Said, so that nothing on standard output does not read as a
		// hang or a failure.
		fmt.Fprintln(env.Stderr, "no devices registered: a device registers when iOS Mail connects to the IMAP server with push on (docs/troubleshooting.md)")
	}
	return 0
}

func devicesRemove(env Env, c adminClient, _ *options, args []string) int {
	user, id := args[0], ""
	if len(args) == 2 {
		id = args[1]
	}
	devs, err := c.Remove(user, id)
	if err != nil {
		return fail(env, err)
	}
	if len(devs) == 0 {
		if left, err := c.Devices(user); err == nil && len(left) > 0 {
			fmt.Fprintf(env.Stderr, "xapsd: none of the %d registration(s) of %q has the account id or device token %q; xapsd devices list %s shows them\n",
				len(left), user, id, shellWord(user))
		} else {
			fmt.Fprintf(env.Stderr, "xapsd: %s\n", noDeviceHint(user))
		}
		return 1
	}
	fmt.Fprintf(env.Stdout, "removed %d registration(s)\n", len(devs))
	printDevices(env.Stdout, devs)
	return 0
}

func testPush(env Env, c adminClient, o *options, args []string) int {
	res, err := c.TestPush(args[0])
	if err != nil {
		return fail(env, err)
	}
	if len(res) == 0 {
		fmt.Fprintf(env.Stderr, "xapsd: %s\n", noDeviceHint(args[0]))
		return 1
	}
	if o.json {
		writeJSONLines(env.Stdout, res, pushJSON)
	} else {
		w := tabwriter.NewWriter(env.Stdout, 0, 2, 2, ' ', 0)
		fmt.Fprintln(w, "ACCOUNT-ID\tDEVICE-TOKEN\tRESULT\tSTATUS\tREASON\tAPNS-ID\tMS")
		for _, r := range res {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%d\n", shown(r.AccountID), shown(r.DeviceToken), shown(r.Outcome), r.Status,
				shown(orDash(r.Reason)), shown(orDash(r.ApnsID)), r.Millis)
		}
		w.Flush()
	}
	for _, r := range res {
		if !pushWorked(r.Outcome) {
			return 1
		}
	}
	return 0
}

func diagnoseUser(env Env, c adminClient, o *options, args []string) int {
	r, err := c.Diagnose(args[0])
	if err != nil {
		return fail(env, err)
	}
	if o.json {
		writeJSONLines(env.Stdout, []diagnose.Report{r}, func(r diagnose.Report) any { return r })
	} else {
		printReport(env.Stdout, r)
	}
	if !r.Verdict.OK {
		return 1
	}
	return 0
}

// printReport writes a diagnosis step by step, then the verdict.
func printReport(w io.Writer, r diagnose.Report) {
	fmt.Fprintf(w, "xapsd diagnose %s (%s)\n", shellWord(r.User), timestamp(r.Time))
	for _, s := range r.Steps {
		fmt.Fprintf(w, "%-6s %s: %s\n", "["+strings.ToUpper(shown(s.Status))+"]", shown(s.Name), shown(s.Summary))
		for _, l := range s.Lines {
			fmt.Fprintf(w, "         %s\n", shown(l))
		}
		if s.Next != "" && s.Status != diagnose.StatusOK {
			fmt.Fprintf(w, "         next: %s\n", shown(s.Next))
		}
	}
	if r.Verdict.OK {
		fmt.Fprintf(w, "verdict: %s\n", shown(r.Verdict.Text))
		return
	}
	fmt.Fprintf(w, "verdict: %s fails: %s\n", shown(r.Verdict.Step), shown(r.Verdict.Text))
}

// pushWorked: Apple took the push, or the dry-run logged it.
func pushWorked(outcome string) bool { return outcome == "delivered" || outcome == "dry-run" }

func importFile(env Env, c adminClient, _ *options, args []string) int {
	data, err := os.ReadFile(args[0])
	if err != nil {
		return fail(env, err)
	}
	found, imported, err := c.Import(data)
	if err != nil {
		return fail(env, err)
	}
	fmt.Fprintf(env.Stdout, "%d registration(s) in %s, %d imported (the others were expired or older than what xapsd has)\n", found, args[0], imported)
	return 0
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shellWord quotes s for a command line when it needs it.
func shellWord(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '@' || r == '.' || r == '-' || r == '_' || r == '+' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z'))
	}) < 0 {
		return s
	}
	if q := shown(s); q != s {
		return q // not a word anyone types, but shown safely
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// timestamp is how every command shows a time: RFC 3339 in UTC, as the log.
func timestamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func printDevices(w io.Writer, devs []ctl.Device) {
	if len(devs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "USER\tACCOUNT-ID\tDEVICE-TOKEN\tREGISTERED\tMAILBOXES")
	for _, d := range devs {
		boxes := make([]string, len(d.Mailboxes))
		for i, m := range d.Mailboxes {
			boxes[i] = shown(m)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", shown(d.User), shown(d.AccountID), shown(d.DeviceToken), timestamp(d.Registered), strings.Join(boxes, ", "))
	}
	tw.Flush()
}

// deviceOut is a device in --json output.
type deviceOut struct {
	User        string   `json:"user"`
	AccountID   string   `json:"accountId"`
	DeviceToken string   `json:"deviceToken"`
	Registered  string   `json:"registered"`
	Mailboxes   []string `json:"mailboxes"`
}

func deviceJSON(d ctl.Device) any {
	mb := d.Mailboxes
	if mb == nil {
		mb = []string{}
	}
	return deviceOut{User: d.User, AccountID: d.AccountID, DeviceToken: d.DeviceToken, Registered: timestamp(d.Registered), Mailboxes: mb}
}

// pushOut is a test-push result in --json output.
type pushOut struct {
	deviceOut
	Outcome string `json:"outcome"`
	Status  int    `json:"status"`
	Reason  string `json:"reason"`
	ApnsID  string `json:"apnsId"`
	Millis  int64  `json:"ms"`
}

func pushJSON(r ctl.PushResult) any {
	return pushOut{deviceOut: deviceJSON(r.Device).(deviceOut), Outcome: r.Outcome, Status: r.Status, Reason: r.Reason, ApnsID: r.ApnsID, Millis: r.Millis}
}

// writeJSONLines writes one JSON object per line.
func writeJSONLines[T any](w io.Writer, items []T, conv func(T) any) {
	esc := &jsonEscaper{w: w}
	defer esc.Close()
	enc := json.NewEncoder(esc)
	enc.SetEscapeHTML(false)
	for _, it := range items {
		enc.Encode(conv(it))
	}
}
