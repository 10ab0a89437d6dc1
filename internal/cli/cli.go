// Package cli is xapsd's command line: flags (including the old daemon's
// single-dash ones), the -pass helper, --check-config, and starting the
// daemon with signal handling. main only calls Main.
package cli

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/xapsd/xapsd/internal/config"
	"github.com/xapsd/xapsd/internal/ctl"
	"github.com/xapsd/xapsd/internal/daemon"
	"github.com/xapsd/xapsd/internal/gcfloor"
	"github.com/xapsd/xapsd/internal/logging"
	"github.com/xapsd/xapsd/internal/statedir"
)

// Env is the process environment Main works in; tests pass buffers.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Version        string
}

// legacyFlags are the old daemon's flags, which Go's flag package let
// users write with one dash; pflag would read "-pass" as four
// one-letter flags.
var legacyFlags = []string{"pass", "configPath", "configName"}

func normalizeArgs(args []string) []string {
	out := make([]string, 0, len(args))
	for _, a := range args {
		for _, f := range legacyFlags {
			if a == "-"+f || strings.HasPrefix(a, "-"+f+"=") {
				a = "-" + a
				break
			}
		}
		out = append(out, a)
	}
	return out
}

// options are the command line's options.
type options struct {
	configFile  string
	configPath  string
	configName  string
	pass        bool
	version     bool
	checkConfig bool
	quiet       bool
	json        bool
	help        bool
}

func newFlagSet(o *options, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet("xapsd", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // errors say "see xapsd --help"; the help goes to stdout
	fs.SortFlags = false
	fs.StringVar(&o.configFile, "config", "", "configuration file (default "+config.DefaultDir+"/"+config.DefaultName+".yaml)")
	fs.BoolVar(&o.checkConfig, "check-config", false, "check the configuration, the credential and the state folder, print the effective configuration with secrets redacted, then exit")
	fs.BoolVarP(&o.quiet, "quiet", "q", false, "with --check-config: print only warnings and errors, not the configuration")
	fs.BoolVar(&o.json, "json", false, "devices list, test-push, diagnose: JSON (one object per line)")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.BoolVar(&o.pass, "pass", false, "read an Apple ID password and print its SHA-256 for appleIdHashedPassword, then exit (-pass works too)")
	fs.StringVar(&o.configPath, "configPath", "", "folder to look for the configuration in, before "+config.DefaultDir+" (old xapsd; -configPath works too)")
	fs.StringVar(&o.configName, "configName", config.DefaultName, "configuration file name without extension (old xapsd; -configName works too)")
	fs.BoolVarP(&o.help, "help", "h", false, "this help; with a command, the command's help")
	return fs
}

// Main runs xapsd with args (without the program name) and returns the
// exit code: 0 done, 1 failed, 2 wrong usage.
func Main(args []string, env Env) int {
	var o options
	fs := newFlagSet(&o, env.Stderr)
	args = normalizeArgs(args)
	usageFail := func(err error) int {
		fmt.Fprintf(env.Stderr, "xapsd: %v (see xapsd --help)\n", err)
		return 2
	}
	if err := checkOptionNames(fs, args); err != nil {
		return usageFail(err)
	}
	if err := fs.Parse(args); err != nil {
		return usageFail(err)
	}
	words := fs.Args()
	if len(words) > 0 && words[0] == "help" {
		return help(env, fs, words[1:])
	}
	if o.help {
		return help(env, fs, words)
	}
	cmd, cmdArgs, err := findCommand(words)
	switch {
	case err != nil:
		fmt.Fprintf(env.Stderr, "xapsd: %v\n", err)
		return 2
	case cmd != nil && (len(cmdArgs) < cmd.min || len(cmdArgs) > cmd.max):
		fmt.Fprintf(env.Stderr, "xapsd: %s: wrong number of arguments (usage: %s)\n", cmd.name, cmd.usage())
		return 2
	case o.json && (cmd == nil || !cmd.json):
		return usageFail(usageError("--json goes with devices list, test-push and diagnose"))
	case o.quiet && !o.checkConfig:
		return usageFail(usageError("--quiet goes with --check-config"))
	case o.checkConfig && cmd != nil:
		return usageFail(usageError("--check-config takes no command"))
	}
	switch {
	case o.version:
		fmt.Fprintf(env.Stdout, "xapsd %s\n", versionString(env.Version))
		return 0
	case o.pass:
		return hashPassword(env)
	}

	path := o.configFile
	if path == "" {
		dirs := []string{}
		if o.configPath != "" {
			dirs = append(dirs, o.configPath)
		}
		p, err := config.Find(append(dirs, config.DefaultDir), o.configName)
		if err != nil {
			fmt.Fprintf(env.Stderr, "xapsd: %v\n", err)
			return 1
		}
		path = p
	}
	cfg, warnings, err := config.Load(path)
	if err != nil {
		// The warnings (an unknown key, say) may explain the error.
		for _, w := range warnings {
			fmt.Fprintf(env.Stderr, "warning: %s\n", w)
		}
		fmt.Fprintf(env.Stderr, "xapsd: %v\n", err)
		return 1
	}
	if cmd != nil {
		return cmd.run(env, ctl.NewClient(statedir.New(cfg.DatabaseFile).AdminSocket()), &o, cmdArgs)
	}
	if o.checkConfig {
		return check(env, cfg, warnings, o.quiet)
	}

	logOut, flushLog := daemonLogOutput(env.Stderr)
	defer flushLog()
	log, err := logging.New(logOut, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		fmt.Fprintf(env.Stderr, "xapsd: %v\n", err)
		return 1
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	log.WithFields(map[string]any{"version": versionString(env.Version), "config": cfg.File}).Info("starting xapsd")

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	reload := make(chan struct{}, 1)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		stopping := false
		for s := range sigs {
			switch {
			case s == syscall.SIGHUP:
				select {
				case reload <- struct{}{}:
				default:
				}
			case stopping:
				// A second stop signal means "now".
				log.Warn("second stop signal: exiting without finishing")
				flushLog()
				os.Exit(1)
			default:
				stopping = true
				stop()
			}
		}
	}()
	if os.Getenv("GOGC") == "" {
		// An admin's GOGC wins; otherwise a small registry does not
		// mean a garbage collection every few hundred pushes.
		gc := gcfloor.Start(gcfloor.DefaultFloor)
		defer gc.Stop()
	}
	if err := daemon.Run(ctx, daemon.Options{Config: cfg, Log: log, Reload: reload}); err != nil {
		log.WithError(err).Error("xapsd stopped with an error")
		return 1
	}
	log.Info("xapsd stopped")
	return 0
}

// daemonLogOutput is where the daemon logs: stderr, through a
// logging.Writer that gathers the lines of busy moments into one write
// (close it with done, which writes what waits). On a terminal the lines
// go straight to it, and logrus colours them as before.
func daemonLogOutput(stderr io.Writer) (out io.Writer, done func()) {
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return stderr, func() {}
	}
	w := logging.NewWriter(stderr)
	return w, func() { _ = w.Close() }
}

func versionString(v string) string {
	if v != "" {
		return v
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// hashPassword is the old `xapsd -pass` (docs/protocol.md#apple-password-hash): the lower-case hex
// SHA-256 of the password, for appleIdHashedPassword. The prompt goes to
// stderr so that stdout holds only the hash.
func hashPassword(env Env) int {
	var pw []byte
	if f, ok := env.Stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(env.Stderr, "Apple ID password: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(env.Stderr)
		if err != nil {
			fmt.Fprintf(env.Stderr, "xapsd: read password: %v\n", err)
			return 1
		}
		pw = b
	} else {
		line, err := bufio.NewReader(env.Stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			fmt.Fprintf(env.Stderr, "xapsd: read password: %v\n", err)
			return 1
		}
		pw = []byte(strings.TrimRight(line, "\r\n"))
	}
	if len(pw) == 0 {
		fmt.Fprintln(env.Stderr, "xapsd: empty password")
		return 1
	}
	sum := sha256.Sum256(pw)
	fmt.Fprintln(env.Stdout, hex.EncodeToString(sum[:]))
	return 0
}

// check is --check-config: problems on stderr ("warning: …" and, for
// what stops the start, "xapsd: …" with exit 1); on stdout the line the
// start logs and the effective configuration, unless quiet.
func check(env Env, cfg *config.Config, warnings []string, quiet bool) int {
	for _, w := range warnings {
		fmt.Fprintf(env.Stderr, "warning: %s\n", w)
	}
	summary, notes, err := daemon.Check(cfg)
	for _, n := range notes {
		fmt.Fprintf(env.Stderr, "warning: %s\n", n)
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "xapsd: %v\n", err)
		return 1
	}
	if !quiet {
		fmt.Fprintf(env.Stdout, "# xapsd would start with: %s\n", summary)
		fmt.Fprint(env.Stdout, cfg.Redacted())
	}
	return 0
}
