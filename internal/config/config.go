// Package config reads, checks and prints the xapsd configuration file.
//
// The file is YAML with the key names of the old xapsd, so an existing
// /etc/xapsd/xapsd.yaml keeps working unchanged. Keys are matched case-insensitively because
// the old daemon read them through viper. Unlike the old daemon, every key has a default,
// values are checked once at load time, and every problem is reported at once so an
// administrator can fix the file in one pass.
//
// Only the daemon's wiring and admin commands should import this package; the parts of the
// daemon take plain values from it.
package config

import (
	"net"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Where the old daemon looked for its file (docs/configuration.md#finding-the-file).
const (
	DefaultName = "xapsd"
	DefaultDir  = "/etc/xapsd"
)

// The APNs hosts behind the apnsEndpoint words (docs/protocol.md#apns-endpoint).
const (
	productionURL  = "https://api.push.apple.com"
	developmentURL = "https://api.sandbox.push.apple.com"
)

// Values of apnsEndpoint that are not URLs.
const (
	EndpointProduction  = "production"
	EndpointDevelopment = "development"
	EndpointDryRun      = "dry-run"
)

// Config is the effective configuration. The struct tags give the key as written in the file
// (the legacy spelling) plus options: "path" marks file names resolved against the config
// file's folder, "secret" marks values that Redacted hides. Config holds only comparable
// values, so two loads can be compared with == (e.g. on reload).
type Config struct {
	File string // absolute path of the file loaded ("" = built-in defaults)

	LogLevel  string `config:"loglevel"`
	LogFormat string `config:"logFormat"`

	DatabaseFile string `config:"databaseFile,path"`

	ListenAddr    string `config:"listenAddr,list"` // one host or several, "a, b" (see ListenHosts)
	Port          int    `config:"port"`
	TLSCertFile   string `config:"tlsCertfile,path"`
	TLSKeyFile    string `config:"tlsKeyfile,path"`
	TLSListenAddr string `config:"tlsListenAddr"`
	TLSPort       int    `config:"tlsPort"`

	CheckInterval time.Duration `config:"checkInterval"`
	Delay         time.Duration `config:"delay"`

	CertificateFileP12         string `config:"certificateFileP12,path"`
	CertificateFileP12Password string `config:"certificateFileP12Password,secret"`
	CertificateFilePem         string `config:"certificateFilePem,path"`
	CertificateFilePemKey      string `config:"certificateFilePemKey,path"`
	KeyFileP8                  string `config:"keyFileP8,path"`
	KeyFileTopic               string `config:"keyFileTopic"`
	KeyFileKeyID               string `config:"keyFileKeyId"`
	KeyFileTeamID              string `config:"keyFileTeamId"`
	AppleID                    string `config:"appleId"`
	AppleIDHashedPassword      string `config:"appleIdHashedPassword,secret"`
	// The macOS Server vendor identity that signs requests to Apple's certificate service
	// (docs/protocol.md#apple-cert-request); xapsd ships none, the admin extracts their own.
	AppleIDVendorCertificate string `config:"appleIdVendorCertificate,path"`
	AppleIDVendorKey         string `config:"appleIdVendorKey,path"`
	// DryRunTopic is what /register answers in dry-run mode when no credential gives a
	// topic; it must be longer than 50 bytes for the stock plugin (docs/protocol.md#topic-length).
	DryRunTopic string `config:"dryRunTopic"`

	APNsEndpoint    string        `config:"apnsEndpoint"`
	PushMailboxes   string        `config:"pushMailboxes"`
	APNsPriority    int           `config:"apnsPriority"` // 0 = header not sent, as the old daemon did
	APNsExpiration  time.Duration `config:"apnsExpiration"`
	APNsConcurrency int           `config:"apnsConcurrency"`
	// APNsMaxConnections caps the HTTP/2 connections of one credential;
	// more than one opens only while the open ones are at APNs' stream
	// limit with pushes waiting.
	APNsMaxConnections   int           `config:"apnsMaxConnections"`
	RegistrationTTL      time.Duration `config:"registrationTTL"`
	MaxDevicesPerAccount int           `config:"maxDevicesPerAccount"`
	RegistryCompactAfter int           `config:"registryCompactAfter"`
	ShutdownTimeout      time.Duration `config:"shutdownTimeout"`
	MetricsListenAddr    string        `config:"metricsListenAddr"` // "" or "off" = no metrics listener
	MetricsPprof         bool          `config:"metricsPprof"`      // serve /debug/pprof/ on the metrics listener
	PluginSecretFile     string        `config:"pluginSecretFile,path"`
	AllowUnauthenticated bool          `config:"allowUnauthenticated"`
	MaxRegistrations     int           `config:"maxRegistrations"`
	ShutdownDrainTimeout time.Duration `config:"shutdownDrainTimeout"`
	// DatabaseURL selects PostgreSQL as the registry, shared by every
	// xapsd that points at it (docs/operations.md#running-several-xapsd);
	// empty keeps the registry in databaseFile. Redacted hides a password
	// in it.
	DatabaseURL          string `config:"databaseURL,dburl"`
	DatabasePasswordFile string `config:"databasePasswordFile,path"`
	// APNsMinInterval is the shortest time between two pushes to one device; 0 = none.
	APNsMinInterval time.Duration `config:"apnsMinInterval"`
}

// Default returns the built-in defaults: the legacy sample's values where it had them
// (internal/config/testdata/good/legacy.yaml), otherwise the values docs/configuration.md explains.
func Default() *Config {
	return &Config{
		LogLevel:             "info",
		LogFormat:            "text",
		DatabaseFile:         "/var/lib/xapsd/database.json",
		ListenAddr:           DefaultListenAddr,
		Port:                 11619,
		TLSPort:              11620,
		CheckInterval:        20 * time.Second,
		Delay:                30 * time.Second,
		DryRunTopic:          "com.apple.mail.XServer.00000000-0000-4000-8000-000000000000",
		APNsEndpoint:         EndpointProduction,
		PushMailboxes:        "registered",
		APNsExpiration:       24 * time.Hour,
		APNsConcurrency:      1000,
		APNsMaxConnections:   4,
		RegistrationTTL:      30 * 24 * time.Hour,
		MaxDevicesPerAccount: 8,
		RegistryCompactAfter: 100000,
		ShutdownTimeout:      6 * time.Second,
		MetricsListenAddr:    "127.0.0.1:11621",
		MaxRegistrations:     1000000,
		ShutdownDrainTimeout: 2 * time.Second,
		APNsMinInterval:      3 * time.Second,
	}
}

// DefaultListenAddr is loopback for both IPv4 and IPv6, so that a plugin URL with
// 127.0.0.1, [::1] or localhost (whichever of the two the host resolves it to) all reach
// xapsd (docs/configuration.md#listenaddr).
const DefaultListenAddr = "127.0.0.1, ::1"

// ListenHosts lists the hosts of listenAddr: it holds one host or several, separated by
// commas or spaces as in Dovecot's listen setting; "" (one empty host) means every
// interface. An explicit single address means just that address.
func (c *Config) ListenHosts() []string {
	return splitHosts(c.ListenAddr)
}

// ListenAddresses are the host:port pairs of the plain-HTTP listeners for the Dovecot
// plugin, one per host of listenAddr.
func (c *Config) ListenAddresses() []string {
	hosts := c.ListenHosts()
	out := make([]string, len(hosts))
	for i, h := range hosts {
		out[i] = net.JoinHostPort(h, strconv.Itoa(c.Port))
	}
	return out
}

// splitHosts splits a list of hosts at commas and white space and takes the brackets off
// IPv6 addresses; an empty list is the one host "" (every interface).
func splitHosts(s string) []string {
	var out []string
	for _, h := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		out = append(out, stripBrackets(h))
	}
	if len(out) == 0 {
		return []string{""}
	}
	return out
}

// TLSListenAddress is the host:port of the optional TLS listener.
func (c *Config) TLSListenAddress() string {
	return net.JoinHostPort(stripBrackets(c.TLSListenAddr), strconv.Itoa(c.TLSPort))
}

// TLSEnabled reports whether the TLS listener runs: the old daemon started it when either
// file was named (docs/configuration.md#tlscertfile); Validate insists on both.
func (c *Config) TLSEnabled() bool {
	return c.TLSCertFile != "" || c.TLSKeyFile != ""
}

// Exposed reports the plugin API listeners that others than this machine
// can reach: any host that is not a loopback address or "localhost".
func (c *Config) Exposed() []string {
	var out []string
	for _, h := range c.ListenHosts() {
		if !isLoopback(h) {
			out = append(out, "listenAddr")
			break
		}
	}
	if c.TLSEnabled() && !isLoopback(c.TLSListenAddr) {
		out = append(out, "tlsListenAddr")
	}
	return out
}

func isLoopback(host string) bool {
	host = stripBrackets(host)
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, _, _ := strings.Cut(host, "%")
	addr := net.ParseIP(ip)
	return addr != nil && addr.IsLoopback()
}

// DryRun reports whether pushes are logged instead of sent to Apple.
func (c *Config) DryRun() bool {
	return strings.EqualFold(c.APNsEndpoint, EndpointDryRun)
}

// MetricsEnabled reports whether the monitoring listener should run.
func (c *Config) MetricsEnabled() bool {
	return c.MetricsListenAddr != "" && !strings.EqualFold(c.MetricsListenAddr, "off")
}

// APNsURL is the base URL pushes go to, "" in dry-run mode.
func (c *Config) APNsURL() (string, error) {
	switch strings.ToLower(c.APNsEndpoint) {
	case EndpointProduction:
		return productionURL, nil
	case EndpointDevelopment:
		return developmentURL, nil
	case EndpointDryRun:
		return "", nil
	}
	u, err := parseEndpointURL(c.APNsEndpoint)
	if err != nil {
		return "", err
	}
	return u, nil
}

// stripBrackets accepts the legacy sample's '[::1]' form of an IPv6 host.
func stripBrackets(host string) string {
	if len(host) >= 2 && host[0] == '[' && host[len(host)-1] == ']' {
		return host[1 : len(host)-1]
	}
	return host
}

// kind is how a key's value is parsed.
type kind int

const (
	kindString kind = iota
	kindInt
	kindDuration
	kindBool
)

// key describes one configuration key, derived from the Config struct tags so the list of
// keys cannot drift from the struct.
type key struct {
	name   string // legacy spelling, e.g. "checkInterval"
	field  int    // index in Config
	kind   kind
	path   bool // resolved against the config file's folder
	secret bool // hidden by Redacted
	dburl  bool // a database URL: Redacted hides the password in it
	list   bool // a string that may also be written as a YAML list
}

var durationType = reflect.TypeFor[time.Duration]()

// keys lists the configuration keys in struct order.
func keys() []key {
	t := reflect.TypeFor[Config]()
	var ks []key
	for i := range t.NumField() {
		f := t.Field(i)
		tag, ok := f.Tag.Lookup("config")
		if !ok {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		k := key{name: name, field: i}
		switch {
		case f.Type == durationType:
			k.kind = kindDuration
		case f.Type.Kind() == reflect.Int:
			k.kind = kindInt
		case f.Type.Kind() == reflect.String:
			k.kind = kindString
		case f.Type.Kind() == reflect.Bool:
			k.kind = kindBool
		default:
			// A programming error caught by the tests, not by users.
			panic("config: unsupported field type " + f.Type.String())
		}
		for _, o := range strings.Split(opts, ",") {
			switch o {
			case "path":
				k.path = true
			case "secret":
				k.secret = true
			case "dburl":
				k.dburl = true
			case "list":
				k.list = true
			}
		}
		ks = append(ks, k)
	}
	return ks
}
