package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"

	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/suggest"
)

// command is one of the admin commands that talk to the running daemon.
type command struct {
	name    string // "devices list"
	args    string // "[USER]"
	min     int    // arguments after the name
	max     int
	json    bool   // takes --json
	summary string // one line for the command list
	help    string // the rest of `xapsd help NAME`
	exits   string
	run     func(env Env, c adminClient, o *options, args []string) int
}

func (c *command) usage() string {
	u := "xapsd [--config FILE] " + c.name
	if c.json {
		u += " [--json]"
	}
	if c.args != "" {
		u += " " + c.args
	}
	return u
}

// exitCodes are Main's exit codes. A push credential that does not load
// is not among the failures: the daemon starts without it (and says why),
// so --check-config only warns about it, and a reload that fixes
// something else is not refused (test/docs checks every claim about it).
const exitCodes = `Exit codes:
  0  done: the daemon stopped cleanly; --check-config: the daemon would start
     (warnings go to standard error, among them a push credential that does
     not load, expired or missing: the daemon starts without it and says why)
  1  failed: the daemon could not start or stopped with an error;
     --check-config: the daemon would not start (a problem in the file, a
     state folder it cannot write, an address it cannot listen on); a command:
     the daemon cannot be reached, nothing matched, or a test push was not
     delivered
  2  wrong usage: an unknown option or command, or wrong arguments
`

// printUsage writes the main help.
func printUsage(w io.Writer, fs *pflag.FlagSet) {
	fmt.Fprintf(w, `Usage:
  xapsd [OPTIONS]                   run the daemon
  xapsd [OPTIONS] --check-config    check the configuration and credential, then exit
  xapsd [OPTIONS] COMMAND [ARGS]    talk to the running daemon
  xapsd help [COMMAND]              this help, or the help of a command

Push e-mail for iOS Mail on Dovecot servers. Without --config, xapsd reads
%s/%s.yaml (the old xapsd's -configPath and -configName work too).

Commands:
`, config.DefaultDir, config.DefaultName)
	for _, c := range commands() {
		line := c.name
		if c.args != "" {
			line += " " + c.args
		}
		fmt.Fprintf(w, "  %-40s %s\n", line, c.summary)
	}
	fmt.Fprintf(w, "\nOptions:\n%s\n%s", optionUsages(fs, nil), exitCodes)
}

// printCommandHelp writes the help of one command.
func printCommandHelp(w io.Writer, fs *pflag.FlagSet, c *command) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n\nOptions:\n%s\nExit codes:\n%s", c.usage(), strings.TrimSpace(c.help),
		optionUsages(fs, func(name string) bool { return name == "config" || name == "help" || (name == "json" && c.json) }), c.exits)
}

// optionArg names the value an option takes in the help.
var optionArg = map[string]string{"config": "FILE", "configPath": "DIR", "configName": "NAME"}

// optionUsages lists the options (those keep accepts, or all) in the
// style of the GNU tools: a boolean shows no value, an option with a
// value names it.
func optionUsages(fs *pflag.FlagSet, keep func(string) bool) string {
	var b strings.Builder
	fs.VisitAll(func(f *pflag.Flag) {
		if keep != nil && !keep(f.Name) {
			return
		}
		left := "    --" + f.Name
		if f.Shorthand != "" {
			left = "-" + f.Shorthand + ", --" + f.Name
		}
		if a, ok := optionArg[f.Name]; ok {
			left += " " + a
		}
		fmt.Fprintf(&b, "  %-24s %s\n", left, f.Usage)
	})
	return b.String()
}

// findCommand picks the command the words name, and the arguments after
// its name. No words: run the daemon (nil, nil, nil).
func findCommand(words []string) (*command, []string, error) {
	if len(words) == 0 {
		return nil, nil, nil
	}
	all := commands()
	var names []string
	for i := range all {
		c := &all[i]
		n := strings.Fields(c.name)
		if len(words) >= len(n) && strings.Join(words[:len(n)], " ") == c.name {
			return c, words[len(n):], nil
		}
		names = append(names, c.name)
	}
	if words[0] == "devices" {
		if len(words) == 1 {
			return nil, nil, usageError("devices needs a subcommand: devices list or devices remove (see xapsd help devices)")
		}
		return nil, nil, usageError(fmt.Sprintf("unknown command %q%s (see xapsd help devices)", "devices "+words[1], suggest.Hint("devices "+words[1], names...)))
	}
	var firsts []string
	for _, n := range names {
		firsts = append(firsts, strings.Fields(n)[0])
	}
	return nil, nil, usageError(fmt.Sprintf("unknown command %q%s (see xapsd help)", words[0], suggest.Hint(words[0], append(firsts, "help")...)))
}

// usageError is wrong usage: exit code 2.
type usageError string

func (e usageError) Error() string { return string(e) }

// help answers `xapsd help [COMMAND]` and --help: the help on stdout,
// exit 0; an unknown command on stderr, exit 2.
func help(env Env, fs *pflag.FlagSet, words []string) int {
	if len(words) == 0 {
		printUsage(env.Stdout, fs)
		return 0
	}
	if len(words) == 1 && words[0] == "devices" {
		for _, c := range commands() {
			if strings.HasPrefix(c.name, "devices ") {
				printCommandHelp(env.Stdout, fs, &c)
				fmt.Fprintln(env.Stdout)
			}
		}
		return 0
	}
	if len(words) == 1 && words[0] == "help" {
		printUsage(env.Stdout, fs)
		return 0
	}
	c, _, err := findCommand(words)
	if err != nil {
		fmt.Fprintf(env.Stderr, "xapsd: %v\n", err)
		return 2
	}
	printCommandHelp(env.Stdout, fs, c)
	return 0
}

// checkOptionNames catches an unknown long option (--conifg) and a long
// option written with one dash (-config), and names the option most
// likely meant (suggest, as for commands and configuration keys). pflag
// would say "unknown flag: --conifg", or read -config as the one-letter
// options c, o, n, f, … and say "unknown shorthand flag: 'c'". The old
// daemon's -pass, -configPath and -configName are rewritten before
// (normalizeArgs) and never get here.
func checkOptionNames(fs *pflag.FlagSet, args []string) error {
	var names []string
	fs.VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return nil
		}
		if long, ok := strings.CutPrefix(a, "--"); ok {
			name, _, hasValue := strings.Cut(long, "=")
			f := fs.Lookup(name)
			switch {
			case f == nil:
				return unknownOption("--"+name, names)
			case f.Value.Type() != "bool" && !hasValue:
				i++ // its value may start with a dash
			}
			continue
		}
		if len(a) < 3 || a[0] != '-' {
			continue
		}
		name, _, _ := strings.Cut(a[1:], "=")
		if s := suggest.Closest(name, names); s != "" {
			return usageError(fmt.Sprintf("unknown option %s: long options take two dashes; did you mean --%s?", a, s))
		}
		if !allShorthands(fs, name) {
			return usageError(fmt.Sprintf("unknown option %s: long options take two dashes, and there is no --%s (xapsd --help lists them)", a, name))
		}
	}
	return nil
}

// unknownOption is the usage error for an option xapsd does not have.
func unknownOption(opt string, names []string) error {
	if s := suggest.Closest(strings.TrimLeft(opt, "-"), names); s != "" {
		return usageError(fmt.Sprintf("unknown option %s; did you mean --%s?", opt, s))
	}
	return usageError(fmt.Sprintf("unknown option %s (xapsd --help lists them)", opt))
}

// allShorthands reports whether every letter of s is a one-letter
// option, as in "-qv": then pflag reads it right.
func allShorthands(fs *pflag.FlagSet, s string) bool {
	for _, r := range s {
		if fs.ShorthandLookup(string(r)) == nil {
			return false
		}
	}
	return true
}
