// Command xapsd gives iOS Mail push to Dovecot users. See README.md.
package main

import (
	"os"

	"github.com/xapsd/xapsd/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	os.Exit(cli.Main(os.Args[1:], cli.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Version: version}))
}
