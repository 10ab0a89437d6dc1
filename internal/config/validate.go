package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/xapsd/xapsd/internal/suggest"
)

// Limits checked by Validate.
const (
	maxExpiration  = 30 * 24 * time.Hour // APNs keeps a push at most 30 days (apns-and-users)
	minTTL         = time.Hour
	maxConcurrency = 100000
	maxConnections = 64
	maxDevices     = 1000
	topicMinBytes  = 51 // the stock plugin asserts a /register body of more than 50 bytes
	maxMinInterval = time.Hour
)

// Validate checks the whole configuration and returns every problem joined with
// errors.Join, or nil. Each problem starts with the key and the bad value.
func (c *Config) Validate() error {
	return errors.Join(c.validate(nil)...)
}

var (
	hexSHA256 = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)
	hostName  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)
	appleID10 = regexp.MustCompile(`^[A-Z0-9]{10}$`)
)

// validate does the work of Validate. given holds the values as written in the file (nil
// when there is no file), so messages quote "-5" rather than the parsed "-5s".
func (c *Config) validate(given map[string]string) []error {
	var errs []error
	bad := func(name string, value any, format string, args ...any) {
		shown, ok := given[name]
		if ok {
			shown = show(shown)
		} else {
			shown = showValue(value)
		}
		errs = append(errs, fmt.Errorf("%s: %s: %s", name, shown, fmt.Sprintf(format, args...)))
	}
	missing := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
	}

	// A control character in a value is never meant and would end up in paths and logs.
	v := reflect.ValueOf(c).Elem()
	for _, k := range keys() {
		if k.kind == kindString && strings.IndexFunc(v.Field(k.field).String(), isControl) >= 0 {
			if k.secret {
				missing(k.name, "contains control characters")
			} else {
				bad(k.name, v.Field(k.field).String(), "contains control characters")
			}
		}
	}

	switch strings.ToLower(c.LogLevel) {
	case "trace", "debug", "info", "warn", "warning", "error":
	default:
		bad("loglevel", c.LogLevel, "must be trace, debug, info, warn or error%s", suggest.Hint(c.LogLevel, "trace", "debug", "info", "warn", "error"))
	}
	switch strings.ToLower(c.LogFormat) {
	case "text", "json":
	default:
		bad("logFormat", c.LogFormat, "must be text or json%s", suggest.Hint(c.LogFormat, "text", "json"))
	}

	if c.DatabaseFile == "" {
		missing("databaseFile", "must not be empty")
	}

	// An address that is not valid is reported once, not again below as
	// "listens beyond this machine".
	invalidAddr := map[string]bool{}
	if msg := c.checkListenHosts(); msg != "" {
		bad("listenAddr", c.ListenAddr, "%s", msg)
		invalidAddr["listenAddr"] = true
	}
	if !validPort(c.Port) {
		bad("port", c.Port, "must be between 1 and 65535")
	}
	if !validHost(c.TLSListenAddr) {
		invalidAddr["tlsListenAddr"] = true
		bad("tlsListenAddr", c.TLSListenAddr, "must be an IP address or host name without port (the port goes in tlsPort)%s", portHint(c.TLSListenAddr, "tlsListenAddr", "tlsPort"))
	}
	if !validPort(c.TLSPort) {
		bad("tlsPort", c.TLSPort, "must be between 1 and 65535")
	}
	// The old daemon started TLS with only one of the two files and then failed
	// at the first handshake; refuse that at load time instead.
	switch {
	case c.TLSCertFile != "" && c.TLSKeyFile == "":
		missing("tlsKeyfile", "must be set when tlsCertfile is set")
	case c.TLSKeyFile != "" && c.TLSCertFile == "":
		missing("tlsCertfile", "must be set when tlsKeyfile is set")
	}
	if c.TLSEnabled() && c.Port == c.TLSPort && validPort(c.Port) && c.sharesListenHost(c.TLSListenAddr) {
		bad("tlsPort", c.TLSPort, "is also the plain HTTP port; the two listeners need different ports")
	}

	// The old daemon panicked on checkInterval 0.
	if c.CheckInterval <= 0 {
		bad("checkInterval", c.CheckInterval, "must be a positive number of seconds")
	}
	if c.Delay <= 0 {
		bad("delay", c.Delay, "must be a positive number of seconds")
	}

	if c.CertificateFilePemKey != "" && c.CertificateFilePem == "" {
		missing("certificateFilePem", "must be set when certificateFilePemKey is set")
	}
	// Token mode needs all four values; the sample's placeholders for the other
	// three are harmless as long as keyFileP8 is empty.
	if c.KeyFileP8 != "" {
		for _, m := range []struct{ name, value string }{
			{"keyFileKeyId", c.KeyFileKeyID},
			{"keyFileTeamId", c.KeyFileTeamID},
			{"keyFileTopic", c.KeyFileTopic},
		} {
			if m.value == "" {
				missing(m.name, "must be set when keyFileP8 is set")
			}
		}
	}
	switch {
	case c.AppleID != "" && c.AppleIDHashedPassword == "":
		missing("appleIdHashedPassword", "must be set when appleId is set (use the output of xapsd -pass)")
	case c.AppleIDHashedPassword != "" && c.AppleID == "":
		missing("appleId", "must be set when appleIdHashedPassword is set")
	}
	if c.AppleIDHashedPassword != "" && !hexSHA256.MatchString(c.AppleIDHashedPassword) {
		// Never echo a secret, not even a wrong one.
		missing("appleIdHashedPassword", "<redacted, %d characters>: must be 64 hexadecimal characters (the output of xapsd -pass)", len(c.AppleIDHashedPassword))
	}
	switch {
	case c.AppleIDVendorCertificate != "" && c.AppleIDVendorKey == "":
		missing("appleIdVendorKey", "must be set when appleIdVendorCertificate is set")
	case c.AppleIDVendorKey != "" && c.AppleIDVendorCertificate == "":
		missing("appleIdVendorCertificate", "must be set when appleIdVendorKey is set")
	}
	if c.DryRunTopic == "" {
		missing("dryRunTopic", "must not be empty")
	}

	switch strings.ToLower(c.APNsEndpoint) {
	case EndpointProduction, EndpointDevelopment, EndpointDryRun:
	default:
		if _, err := parseEndpointURL(c.APNsEndpoint); err != nil {
			const valid = "must be production, development, dry-run or an https://host[:port] URL"
			if !strings.Contains(c.APNsEndpoint, "://") {
				// A word, not a URL: what is wrong with it as a URL would only confuse.
				bad("apnsEndpoint", c.APNsEndpoint, "%s%s", valid, suggest.Hint(c.APNsEndpoint, EndpointProduction, EndpointDevelopment, EndpointDryRun))
			} else {
				bad("apnsEndpoint", c.APNsEndpoint, "%s: %v", valid, err)
			}
		}
	}
	switch strings.ToLower(c.PushMailboxes) {
	case "registered", "inbox":
	default:
		bad("pushMailboxes", c.PushMailboxes, "must be registered or inbox%s", suggest.Hint(c.PushMailboxes, "registered", "inbox"))
	}
	switch c.APNsPriority {
	case 0, 5, 10:
	default:
		bad("apnsPriority", c.APNsPriority, "must be 5, 10, or 0 to send no apns-priority header")
	}
	if c.APNsExpiration <= 0 || c.APNsExpiration > maxExpiration {
		bad("apnsExpiration", c.APNsExpiration, "must be more than 0 and at most 720h (30 days, the longest APNs stores a push)")
	}
	if c.APNsConcurrency < 1 || c.APNsConcurrency > maxConcurrency {
		bad("apnsConcurrency", c.APNsConcurrency, "must be between 1 and %d", maxConcurrency)
	}
	if c.APNsMaxConnections < 1 || c.APNsMaxConnections > maxConnections {
		bad("apnsMaxConnections", c.APNsMaxConnections, "must be between 1 and %d", maxConnections)
	}
	if c.RegistrationTTL < minTTL {
		bad("registrationTTL", c.RegistrationTTL, "must be at least 1h")
	}
	if c.MaxDevicesPerAccount < 1 || c.MaxDevicesPerAccount > maxDevices {
		bad("maxDevicesPerAccount", c.MaxDevicesPerAccount, "must be between 1 and %d", maxDevices)
	}
	if c.RegistryCompactAfter < 10 || c.RegistryCompactAfter > 100_000_000 {
		bad("registryCompactAfter", c.RegistryCompactAfter, "must be between 10 and 100000000")
	}
	if c.ShutdownTimeout <= 0 {
		bad("shutdownTimeout", c.ShutdownTimeout, "must be positive")
	}
	if c.ShutdownDrainTimeout <= 0 {
		bad("shutdownDrainTimeout", c.ShutdownDrainTimeout, "must be positive")
	}
	if c.MetricsEnabled() {
		if err := checkHostPort(c.MetricsListenAddr); err != nil {
			if p, perr := strconv.Atoi(strings.TrimSpace(c.MetricsListenAddr)); perr == nil && validPort(p) {
				bad("metricsListenAddr", c.MetricsListenAddr, "is a port without an address: write 127.0.0.1:%d (this host only) or :%d (every interface); \"\" or off turns it off", p, p)
			} else {
				bad("metricsListenAddr", c.MetricsListenAddr, "must be host:port, \"\" or off: %v", err)
			}
		}
	}
	// Whoever reaches the plugin API can register devices for any user
	// and learn who has one; beyond this machine that needs the secret,
	// or the admin's word that a firewall keeps everyone else out.
	if c.PluginSecretFile == "" && !c.AllowUnauthenticated {
		for _, name := range c.Exposed() {
			if invalidAddr[name] {
				continue
			}
			value := c.ListenAddr
			if name == "tlsListenAddr" {
				value = c.TLSListenAddr
			}
			bad(name, value, "listens beyond this machine without authentication: set pluginSecretFile (and the same secret in the Dovecot plugin), "+
				"or allowUnauthenticated: true if only trusted hosts can reach the port")
		}
	}
	if c.MaxRegistrations < 1 || c.MaxRegistrations > 100_000_000 {
		bad("maxRegistrations", c.MaxRegistrations, "must be between 1 and 100000000")
	}
	if u := c.DatabaseURL; u != "" && !strings.HasPrefix(u, "postgres://") && !strings.HasPrefix(u, "postgresql://") && !strings.Contains(u, "=") {
		bad("databaseURL", redactDatabaseURL(u), "must be a postgres:// URL or a keyword string such as \"host=db dbname=xapsd user=xapsd\"")
	}
	if c.DatabasePasswordFile != "" && c.DatabaseURL == "" {
		bad("databasePasswordFile", c.DatabasePasswordFile, "is only used with databaseURL")
	}
	if c.APNsMinInterval < 0 || c.APNsMinInterval > maxMinInterval {
		bad("apnsMinInterval", c.APNsMinInterval, "must be between 0 (no minimum) and 1h")
	}
	return errs
}

func showValue(v any) string {
	switch x := v.(type) {
	case string:
		return show(x)
	case time.Duration:
		return x.String()
	}
	return fmt.Sprint(v)
}

func validPort(p int) bool { return p >= 1 && p <= 65535 }

// validHost accepts "" (all interfaces), an IP address (brackets and a zone allowed) or a
// host name. It rejects "127.0.0.1:11619", a common slip when the port has its own key, and
// "300.1.1.1": a name whose last label is a number is an IP address gone wrong, since no
// top-level domain is all digits (RFC 3696).
func validHost(h string) bool {
	h = stripBrackets(h)
	if h == "" {
		return true
	}
	ip, _, _ := strings.Cut(h, "%")
	if net.ParseIP(ip) != nil {
		return true
	}
	last := h[strings.LastIndexByte(h, '.')+1:]
	return len(h) <= 253 && hostName.MatchString(h) && strings.Trim(last, "0123456789") != ""
}

// sharesListenHost reports whether the TLS listener's host would take the same address
// as one of listenAddr's hosts ("" takes every address).
func (c *Config) sharesListenHost(tlsHost string) bool {
	tlsHost = stripBrackets(tlsHost)
	for _, h := range c.ListenHosts() {
		if h == tlsHost || h == "" || tlsHost == "" {
			return true
		}
	}
	return false
}

// checkListenHosts says what is wrong with listenAddr, or "".
func (c *Config) checkListenHosts() string {
	hosts := c.ListenHosts()
	seen := map[string]bool{}
	for _, h := range hosts {
		which := ""
		if len(hosts) > 1 {
			which = show(h) + ": "
		}
		switch {
		case isPort(h):
			return fmt.Sprintf("%sis a port, not an address: put it in port, and here the address to listen on (default %s)", which, DefaultListenAddr)
		case !validHost(h):
			return fmt.Sprintf("%smust be an IP address or host name without port (the port goes in port)%s", which, portHint(h, "listenAddr", "port"))
		case h == "" && len(hosts) > 1:
			return `"" (every interface) cannot be combined with other addresses`
		case seen[h]:
			return fmt.Sprintf("%s is listed twice", h)
		}
		seen[h] = true
	}
	return ""
}

func isPort(s string) bool {
	p, err := strconv.Atoi(s)
	return err == nil && validPort(p)
}

// portHint explains a host:port written where only the host belongs.
func portHint(h, addrKey, portKey string) string {
	host, port, err := net.SplitHostPort(h)
	if err != nil || !isPort(port) || (host != "" && !validHost(host)) {
		return ""
	}
	if host == "" {
		return fmt.Sprintf(`: write %s: %s, and %s: "" for every interface`, portKey, port, addrKey)
	}
	return fmt.Sprintf(": write %s: %s and %s: %s", addrKey, quoteIPv6(host), portKey, port)
}

// quoteIPv6 quotes an address that YAML would misread unquoted.
func quoteIPv6(h string) string {
	if strings.Contains(h, ":") {
		return `"` + h + `"`
	}
	return h
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if !validHost(host) {
		return fmt.Errorf("bad host %q", host)
	}
	p, err := strconv.Atoi(port)
	if err != nil || !validPort(p) {
		return fmt.Errorf("port %q is not between 1 and 65535", port)
	}
	return nil
}

// parseEndpointURL checks a custom APNs base URL (a test server or a proxy) and returns it
// without trailing slash, because the push library appends /3/device/<token> itself.
func parseEndpointURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", errors.New("not a URL")
	}
	switch {
	case u.Scheme != "https":
		return "", errors.New("the scheme must be https (APNs is HTTP/2 over TLS)")
	case u.Host == "" || u.Hostname() == "":
		return "", errors.New("the URL has no host")
	case u.User != nil:
		return "", errors.New("the URL must not contain a user name or password")
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "", u.Opaque != "":
		return "", errors.New("the URL must not have a path, query or fragment")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || !validPort(n) {
			return "", fmt.Errorf("port %q is not between 1 and 65535", p)
		}
	}
	return "https://" + u.Host, nil
}

// warnings lists settings that are legal but most likely not what the admin meant.
func (c *Config) warnings() []string {
	var w []string
	var creds []string
	for _, k := range []struct{ name, value string }{
		{"certificateFileP12", c.CertificateFileP12},
		{"certificateFilePem", c.CertificateFilePem},
		{"keyFileP8", c.KeyFileP8},
	} {
		if k.value != "" {
			creds = append(creds, k.name)
		}
	}
	if len(creds) > 1 {
		// Same order as the old daemon (docs/protocol.md#apns-credentials).
		all := "both"
		if len(creds) > 2 {
			all = "all"
		}
		w = append(w, fmt.Sprintf("%s are %s set; only %s is used (order: certificateFileP12, then certificateFilePem, then keyFileP8)",
			strings.Join(creds, " and "), all, creds[0]))
	}
	if c.CertificateFileP12Password != "" && c.CertificateFileP12 == "" {
		w = append(w, "certificateFileP12Password: ignored because certificateFileP12 is not set")
	}
	tokenMode := len(creds) > 0 && creds[0] == "keyFileP8"
	if tokenMode {
		if len(c.KeyFileTopic) < topicMinBytes {
			w = append(w, fmt.Sprintf("keyFileTopic: %s: only %d bytes; the stock Dovecot plugin needs a topic of more than 50 bytes and crashes otherwise (a real one looks like com.apple.mail.XServer.<uuid>)",
				show(c.KeyFileTopic), len(c.KeyFileTopic)))
		}
		if c.KeyFileKeyID != "" && !appleID10.MatchString(c.KeyFileKeyID) {
			w = append(w, fmt.Sprintf("keyFileKeyId: %s: Apple key IDs are 10 upper-case letters and digits; is this the sample's placeholder?", show(c.KeyFileKeyID)))
		}
		if c.KeyFileTeamID != "" && !appleID10.MatchString(c.KeyFileTeamID) {
			w = append(w, fmt.Sprintf("keyFileTeamId: %s: Apple team IDs are 10 upper-case letters and digits; is this the sample's placeholder?", show(c.KeyFileTeamID)))
		}
	}
	vendor := c.AppleIDVendorCertificate != "" || c.AppleIDVendorKey != ""
	switch {
	case vendor && c.AppleID == "":
		w = append(w, "appleIdVendorCertificate and appleIdVendorKey: ignored because appleId is not set")
	case !vendor && c.AppleID != "" && len(creds) == 0:
		// Not an error: an install upgraded from the old xapsd has appleId set and keeps
		// using the certificate imported from its database.json until that expires.
		w = append(w, "appleId is set but appleIdVendorCertificate and appleIdVendorKey are not: xapsd cannot ask Apple's "+
			"certificate service for a push certificate without the macOS Server vendor identity, which it does not ship "+
			"(extract it from your own copy of macOS Server; see docs/credentials.md); a certificate already stored or "+
			"imported from the old database.json is used until it expires")
	}
	if strings.EqualFold(c.APNsEndpoint, EndpointDevelopment) {
		w = append(w, "apnsEndpoint: development is Apple's sandbox, for apps built by Xcode; iOS Mail registers with production "+
			"tokens, which the sandbox answers with BadDeviceToken (xapsd then keeps the devices and logs an error). "+
			"Use production unless you know otherwise")
	}
	if c.DryRun() {
		if len(c.DryRunTopic) < topicMinBytes {
			w = append(w, fmt.Sprintf("dryRunTopic: %s: only %d bytes; the stock Dovecot plugin needs a topic of more than 50 bytes and crashes otherwise",
				show(c.DryRunTopic), len(c.DryRunTopic)))
		}
	} else if len(creds) == 0 && c.AppleID == "" {
		w = append(w, "no push credential set (certificateFileP12, certificateFilePem, keyFileP8 or appleId): xapsd cannot push to Apple; set one, or use apnsEndpoint: dry-run to run without Apple")
	}
	return w
}
