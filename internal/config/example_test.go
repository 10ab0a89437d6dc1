package config_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/xapsd/xapsd/internal/config"
)

// Load overlays the file on the defaults, with the old daemon's key names
// in any case and its forms of values (a number of seconds, a quoted
// port), resolves file names against the file's folder, and reports every
// problem at once.
func ExampleLoad() {
	dir, _ := os.MkdirTemp("", "config-example-")
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "xapsd.yaml")
	os.WriteFile(file, []byte("loglevel: Warning\nPort: '11619'\ndelay: 45\ndatabaseFile: state/database.json\napnsEndpoint: dry-run\n"), 0o600)

	c, warnings, err := config.Load(file)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.LogLevel, c.Port, c.Delay, c.CheckInterval, len(warnings))
	fmt.Println(c.DatabaseFile == filepath.Join(dir, "state", "database.json"), c.DryRun())
	fmt.Println(c.ListenAddresses())

	os.WriteFile(file, []byte("port: seventy\ndelay: -1\nlistenAdress: 0.0.0.0\n"), 0o600)
	_, warnings, err = config.Load(file)
	var problems interface{ Unwrap() []error }
	if errors.As(err, &problems) {
		for _, p := range problems.Unwrap() {
			fmt.Println(p)
		}
	}
	fmt.Println(warnings)
	// Output:
	// warn 11619 45s 20s 0
	// true true
	// [127.0.0.1:11619 [::1]:11619]
	// port: seventy: not a whole number
	// delay: -1: must be a positive number of seconds
	// [line 3: unknown key "listenAdress" ignored; did you mean listenAddr?]
}

// Default is the configuration without a file: every key's value, and
// the values that have no key beside it (MaxDevicesPerUser, …), are what
// the daemon passes down; no part below makes up its own.
func ExampleDefault() {
	c := config.Default()
	fmt.Println(c.ListenAddresses(), c.DatabaseFile)
	fmt.Println(c.RegistrationTTL, c.MaxDevicesPerAccount, config.MaxDevicesPerUser, c.MaxRegistrations)
	fmt.Println(c.APNsConcurrency, c.APNsExpiration, c.APNsMinInterval, config.APNsMaxBackoff)
	fmt.Println(c.APNsMaxConnections, config.APNsExtraConnectionIdle)
	// Output:
	// [127.0.0.1:11619 [::1]:11619] /var/lib/xapsd/database.json
	// 720h0m0s 8 100 1000000
	// 1000 24h0m0s 3s 5m0s
	// 4 1m0s
}
