package cli

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/ctl"
)

const commandUsage = `  devices list [USER]                 registered devices, of USER or of everyone
  devices remove USER [ACCOUNT-ID|TOKEN]  remove USER's registrations (all, or the matching one)
  test-push USER                      push to every device of USER now and show Apple's answers
  import FILE                         merge the registrations of another xapsd database.json
  export [FILE]                       write the registry in the database.json format (to stdout)
`

func isCommand(name string) bool {
	switch name {
	case "devices", "test-push", "import", "export":
		return true
	}
	return false
}

func adminCommand(env Env, cfg *config.Config, args []string) int {
	c := ctl.NewClient(ctl.SocketPath(cfg.DatabaseFile))
	usage := func() int {
		fmt.Fprintf(env.Stderr, "usage:\n%s", commandUsage)
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(env.Stderr, "xapsd: %v\n", err)
		return 1
	}
	switch {
	case args[0] == "devices" && len(args) >= 2 && args[1] == "list" && len(args) <= 3:
		user := ""
		if len(args) == 3 {
			user = args[2]
		}
		devs, err := c.Devices(user)
		if err != nil {
			return fail(err)
		}
		printDevices(env, devs)
		if len(devs) == 0 && user != "" {
			fmt.Fprintf(env.Stderr, "no device registered for %q: check that the IMAP login name and the delivery user name are the same (auth_username_format, user_lookup)\n", user)
		}
		return 0
	case args[0] == "devices" && len(args) >= 3 && args[1] == "remove" && len(args) <= 4:
		id := ""
		if len(args) == 4 {
			id = args[3]
		}
		devs, err := c.Remove(args[2], id)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(env.Stdout, "removed %d registration(s)\n", len(devs))
		printDevices(env, devs)
		return 0
	case args[0] == "test-push" && len(args) == 2:
		res, err := c.TestPush(args[1])
		if err != nil {
			return fail(err)
		}
		if len(res) == 0 {
			fmt.Fprintf(env.Stderr, "no device registered for %q\n", args[1])
			return 1
		}
		w := tabwriter.NewWriter(env.Stdout, 0, 2, 2, ' ', 0)
		fmt.Fprintln(w, "ACCOUNT-ID\tDEVICE-TOKEN\tRESULT\tSTATUS\tREASON\tAPNS-ID\tMS")
		failed := false
		for _, r := range res {
			reason := r.Reason
			if reason == "" {
				reason = "-"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%d\n", r.AccountID, r.DeviceToken, r.Outcome, r.Status, reason, orDash(r.ApnsID), r.Millis)
			failed = failed || r.Outcome != "delivered"
		}
		w.Flush()
		if failed {
			return 1
		}
		return 0
	case args[0] == "export" && len(args) <= 2:
		out := env.Stdout
		if len(args) == 2 {
			f, err := os.OpenFile(args[1], os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fail(err)
			}
			defer f.Close()
			out = f
		}
		if err := c.Export(out); err != nil {
			return fail(err)
		}
		return 0
	case args[0] == "import" && len(args) == 2:
		data, err := os.ReadFile(args[1])
		if err != nil {
			return fail(err)
		}
		found, imported, err := c.Import(data)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(env.Stdout, "%d registration(s) in %s, %d imported (the others were expired or older than what xapsd has)\n", found, args[1], imported)
		return 0
	}
	return usage()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printDevices(env Env, devs []ctl.Device) {
	if len(devs) == 0 {
		return
	}
	w := tabwriter.NewWriter(env.Stdout, 0, 2, 2, ' ', 0)
	fmt.Fprintln(w, "USER\tACCOUNT-ID\tDEVICE-TOKEN\tREGISTERED\tMAILBOXES")
	for _, d := range devs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", d.User, d.AccountID, d.DeviceToken, d.Registered.Local().Format(time.DateTime), strings.Join(d.Mailboxes, ", "))
	}
	w.Flush()
}
