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
	"github.com/xapsd/xapsd/internal/daemon"
	"github.com/xapsd/xapsd/internal/gcfloor"
	"github.com/xapsd/xapsd/internal/logging"
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

// Main runs xapsd with args (without the program name) and returns the
// exit code.
func Main(args []string, env Env) int {
	fs := pflag.NewFlagSet("xapsd", pflag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	configFile := fs.String("config", "", "configuration file (default "+config.DefaultDir+"/"+config.DefaultName+".yaml)")
	configPath := fs.String("configPath", "", "folder to look for the configuration in, before "+config.DefaultDir+" (old xapsd flag)")
	configName := fs.String("configName", config.DefaultName, "configuration file name without extension (old xapsd flag)")
	pass := fs.Bool("pass", false, "read an Apple ID password and print its SHA-256 for appleIdHashedPassword, then exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	checkConfig := fs.Bool("check-config", false, "load and check the configuration and credentials, print the effective configuration with secrets redacted, then exit")
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: xapsd [flags]            run the daemon\n       xapsd [flags] COMMAND    talk to the running daemon\n\n"+
			"Push e-mail for iOS Mail on Dovecot servers.\n\nCommands:\n%s\nFlags:\n%s", commandUsage, fs.FlagUsages())
	}
	if err := fs.Parse(normalizeArgs(args)); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(env.Stderr, "xapsd: %v (see xapsd --help)\n", err)
		return 2
	}
	if fs.NArg() > 0 && !isCommand(fs.Arg(0)) {
		fmt.Fprintf(env.Stderr, "xapsd: unknown command %q (see xapsd --help)\n", fs.Arg(0))
		return 2
	}
	switch {
	case *showVersion:
		fmt.Fprintf(env.Stdout, "xapsd %s\n", versionString(env.Version))
		return 0
	case *pass:
		return hashPassword(env)
	}

	path := *configFile
	if path == "" {
		dirs := []string{}
		if *configPath != "" {
			dirs = append(dirs, *configPath)
		}
		p, err := config.Find(append(dirs, config.DefaultDir), *configName)
		if err != nil {
			fmt.Fprintf(env.Stderr, "xapsd: %v\n", err)
			return 1
		}
		path = p
	}
	cfg, warnings, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(env.Stderr, "xapsd: configuration %s is not valid:\n%v\n", path, err)
		return 1
	}
	if fs.NArg() > 0 {
		return adminCommand(env, cfg, fs.Args())
	}
	if *checkConfig {
		return check(env, cfg, warnings)
	}

	log, err := logging.New(env.Stderr, cfg.LogLevel, cfg.LogFormat)
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

func check(env Env, cfg *config.Config, warnings []string) int {
	for _, w := range warnings {
		fmt.Fprintf(env.Stderr, "warning: %s\n", w)
	}
	notes, err := daemon.CheckCredential(cfg)
	if err != nil {
		fmt.Fprintf(env.Stderr, "xapsd: %v\n", err)
		return 1
	}
	for _, n := range notes {
		fmt.Fprintf(env.Stderr, "warning: %s\n", n)
	}
	fmt.Fprint(env.Stdout, cfg.Redacted())
	return 0
}
