package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// writeConfig writes a config file into a fresh folder and returns its path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "xapsd.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustLoad(t *testing.T, text string) (*Config, []string) {
	t.Helper()
	c, w, err := Load(writeConfig(t, text))
	if err != nil {
		t.Fatalf("Load(%q): %v", text, err)
	}
	return c, w
}

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if got := c.ListenAddresses(); !slices.Equal(got, []string{"127.0.0.1:11619", "[::1]:11619"}) {
		t.Errorf("default listen addresses %q, want both loopbacks on 11619", got)
	}
	if c.TLSEnabled() || c.DryRun() || !c.MetricsEnabled() {
		t.Errorf("defaults: TLSEnabled=%v DryRun=%v MetricsEnabled=%v", c.TLSEnabled(), c.DryRun(), c.MetricsEnabled())
	}
	// Each call must hand out its own value: callers overlay flags on it.
	Default().Port = 1
	if Default().Port != 11619 {
		t.Error("Default shares state between calls")
	}
}

// TestEveryKeyLandsInItsFieldInEverySpelling sets each key in a file and checks the field it lands in, including the
// legacy spellings and value forms the old daemon accepted.
func TestEveryKeyLandsInItsFieldInEverySpelling(t *testing.T) {
	dir := "" // filled per case: the temp folder of the file
	tests := []struct {
		name string
		yaml string
		got  func(*Config) any
		want any // a func(dir string) any when it depends on the folder
	}{
		{"loglevel", "loglevel: debug", func(c *Config) any { return c.LogLevel }, "debug"},
		{"loglevel upper-case key and value", "LOGLEVEL: TRACE", func(c *Config) any { return c.LogLevel }, "trace"},
		{"loglevel camel-case key", "LogLevel: error", func(c *Config) any { return c.LogLevel }, "error"},
		{"loglevel warning", "loglevel: warning", func(c *Config) any { return c.LogLevel }, "warn"},
		{"loglevel panic", "loglevel: panic", func(c *Config) any { return c.LogLevel }, "error"},
		{"logFormat", "logFormat: json", func(c *Config) any { return c.LogFormat }, "json"},
		{"databaseFile absolute", "databaseFile: /srv/xapsd/db.json", func(c *Config) any { return c.DatabaseFile }, "/srv/xapsd/db.json"},
		{"databaseFile relative", "databaseFile: state/db.json", func(c *Config) any { return c.DatabaseFile }, func(d string) any { return filepath.Join(d, "state/db.json") }},
		{"listenAddr brackets", "listenAddr: '[::1]'", func(c *Config) any { return c.ListenAddr }, "::1"},
		{"listenAddr ipv4", "listenAddr: 127.0.0.1", func(c *Config) any { return c.ListenAddr }, "127.0.0.1"},
		{"listenAddr all", "listenAddr: \"\"\nallowUnauthenticated: true", func(c *Config) any { return c.ListenAddr }, ""},
		{"listenAddr null keeps default", "listenAddr:", func(c *Config) any { return c.ListenAddr }, "127.0.0.1, ::1"},
		{"listenAddr two", "listenAddr: 127.0.0.1, ::1", func(c *Config) any { return c.ListenAddr }, "127.0.0.1, ::1"},
		{"listenAddr two with brackets and spaces", "listenAddr: '192.0.2.1   [2001:db8::1]'\nallowUnauthenticated: true", func(c *Config) any { return c.ListenAddr }, "192.0.2.1, 2001:db8::1"},
		{"listenAddr YAML list", "listenAddr: [127.0.0.1, '::1', '[fe80::1%eth0]']\nallowUnauthenticated: true", func(c *Config) any { return c.ListenAddr }, "127.0.0.1, ::1, fe80::1%eth0"},
		{"listenAddr YAML block list", "listenAddr:\n  - ::1\n", func(c *Config) any { return c.ListenAddr }, "::1"},
		{"port int", "port: 11700", func(c *Config) any { return c.Port }, 11700},
		{"port string", "port: '11700'", func(c *Config) any { return c.Port }, 11700},
		{"port hex", "port: 0x2DB4", func(c *Config) any { return c.Port }, 11700},
		{"tlsCertfile relative", "tlsCertfile: tls.crt\ntlsKeyfile: /k/tls.key\ntlsListenAddr: 127.0.0.1", func(c *Config) any { return c.TLSCertFile }, func(d string) any { return filepath.Join(d, "tls.crt") }},
		{"tlsKeyfile absolute", "tlsCertfile: tls.crt\ntlsKeyfile: /k/tls.key\ntlsListenAddr: localhost", func(c *Config) any { return c.TLSKeyFile }, "/k/tls.key"},
		{"tlsListenAddr", "tlsListenAddr: '[2001:db8::2]'", func(c *Config) any { return c.TLSListenAddr }, "2001:db8::2"},
		{"tlsPort string", `tlsPort: "8443"`, func(c *Config) any { return c.TLSPort }, 8443},
		{"checkInterval seconds", "checkInterval: 7", func(c *Config) any { return c.CheckInterval }, 7 * time.Second},
		{"checkInterval quoted seconds", "checkInterval: '7'", func(c *Config) any { return c.CheckInterval }, 7 * time.Second},
		{"checkInterval fraction", "checkInterval: 0.25", func(c *Config) any { return c.CheckInterval }, 250 * time.Millisecond},
		{"checkInterval duration", "checkInterval: 1m30s", func(c *Config) any { return c.CheckInterval }, 90 * time.Second},
		{"delay seconds", "delay: 45", func(c *Config) any { return c.Delay }, 45 * time.Second},
		{"delay duration", "delay: 2m", func(c *Config) any { return c.Delay }, 2 * time.Minute},
		{"certificateFileP12", "certificateFileP12: push.p12", func(c *Config) any { return c.CertificateFileP12 }, func(d string) any { return filepath.Join(d, "push.p12") }},
		{"certificateFileP12Password", "certificateFileP12Password: pw", func(c *Config) any { return c.CertificateFileP12Password }, "pw"},
		{"certificateFilePem", "certificateFilePem: push.pem", func(c *Config) any { return c.CertificateFilePem }, func(d string) any { return filepath.Join(d, "push.pem") }},
		{"certificateFilePemKey", "certificateFilePem: p.pem\ncertificateFilePemKey: ../keys/push.key", func(c *Config) any { return c.CertificateFilePemKey }, func(d string) any { return filepath.Join(filepath.Dir(d), "keys/push.key") }},
		{"keyFileP8", "keyFileP8: k.p8\nkeyFileKeyId: K\nkeyFileTeamId: T\nkeyFileTopic: t", func(c *Config) any { return c.KeyFileP8 }, func(d string) any { return filepath.Join(d, "k.p8") }},
		{"keyFileTopic", "keyFileTopic: com.apple.mail.x", func(c *Config) any { return c.KeyFileTopic }, "com.apple.mail.x"},
		{"keyFileKeyId number", "keyFileKeyId: 1234567890", func(c *Config) any { return c.KeyFileKeyID }, "1234567890"},
		{"keyFileTeamId", "KEYFILETEAMID: ABCDE12345", func(c *Config) any { return c.KeyFileTeamID }, "ABCDE12345"},
		{"appleId", "appleId: a@example.com\nappleIdHashedPassword: " + strings.Repeat("ab", 32), func(c *Config) any { return c.AppleID }, "a@example.com"},
		{"appleIdHashedPassword", "appleId: a@example.com\nappleIdHashedPassword: " + strings.Repeat("AB", 32), func(c *Config) any { return c.AppleIDHashedPassword }, strings.Repeat("AB", 32)},
		{"appleIdVendorCertificate", "appleIdVendorCertificate: vendor.pem\nappleIdVendorKey: /k/vendor.key", func(c *Config) any { return c.AppleIDVendorCertificate }, func(d string) any { return filepath.Join(d, "vendor.pem") }},
		{"appleIdVendorKey", "appleIdVendorCertificate: vendor.pem\nappleIdVendorKey: keys/vendor.key", func(c *Config) any { return c.AppleIDVendorKey }, func(d string) any { return filepath.Join(d, "keys/vendor.key") }},
		{"dryRunTopic", "dryRunTopic: com.apple.mail.XServer.11111111-2222-4333-8444-555555555555", func(c *Config) any { return c.DryRunTopic }, "com.apple.mail.XServer.11111111-2222-4333-8444-555555555555"},
		{"apnsEndpoint development", "apnsEndpoint: Development", func(c *Config) any { return c.APNsEndpoint }, "development"},
		{"apnsEndpoint url", "apnsEndpoint: https://127.0.0.1:8443", func(c *Config) any { return c.APNsEndpoint }, "https://127.0.0.1:8443"},
		{"pushMailboxes", "pushMailboxes: Inbox", func(c *Config) any { return c.PushMailboxes }, "inbox"},
		{"apnsPriority 5", "apnsPriority: 5", func(c *Config) any { return c.APNsPriority }, 5},
		{"apnsPriority 10", "apnsPriority: '10'", func(c *Config) any { return c.APNsPriority }, 10},
		{"apnsExpiration", "apnsExpiration: 720h", func(c *Config) any { return c.APNsExpiration }, 720 * time.Hour},
		{"apnsExpiration seconds", "apnsExpiration: 3600", func(c *Config) any { return c.APNsExpiration }, time.Hour},
		{"apnsConcurrency", "apnsConcurrency: 100000", func(c *Config) any { return c.APNsConcurrency }, 100000},
		{"apnsMaxConnections", "apnsMaxConnections: 64", func(c *Config) any { return c.APNsMaxConnections }, 64},
		{"registrationTTL", "registrationTTL: 1h", func(c *Config) any { return c.RegistrationTTL }, time.Hour},
		{"maxDevicesPerAccount", "maxDevicesPerAccount: 1000", func(c *Config) any { return c.MaxDevicesPerAccount }, 1000},
		{"registryCompactAfter", "registryCompactAfter: 50", func(c *Config) any { return c.RegistryCompactAfter }, 50},
		{"shutdownTimeout", "shutdownTimeout: 1m", func(c *Config) any { return c.ShutdownTimeout }, time.Minute},
		{"metricsListenAddr", "metricsListenAddr: '[::1]:9100'", func(c *Config) any { return c.MetricsListenAddr }, "[::1]:9100"},
		{"metricsListenAddr off", "metricsListenAddr: OFF", func(c *Config) any { return c.MetricsListenAddr }, ""},
		{"metricsListenAddr empty", `metricsListenAddr: ""`, func(c *Config) any { return c.MetricsListenAddr }, ""},
		{"metricsListenAddr null keeps default", "metricsListenAddr: ~", func(c *Config) any { return c.MetricsListenAddr }, "127.0.0.1:11621"},
		{"metricsPprof", "metricsPprof: true", func(c *Config) any { return c.MetricsPprof }, true},
		{"metricsPprof quoted", `metricsPprof: 'False'`, func(c *Config) any { return c.MetricsPprof }, false},
		{"pluginSecretFile", "pluginSecretFile: plugin.secret", func(c *Config) any { return c.PluginSecretFile }, func(d string) any { return filepath.Join(d, "plugin.secret") }},
		{"pluginSecretFile opens the listener", "pluginSecretFile: /etc/xapsd/plugin.secret\nlistenAddr: 0.0.0.0", func(c *Config) any { return c.ListenAddr }, "0.0.0.0"},
		{"allowUnauthenticated", "allowUnauthenticated: true\nlistenAddr: 192.0.2.7", func(c *Config) any { return c.AllowUnauthenticated }, true},
		{"maxRegistrations", "maxRegistrations: 5000", func(c *Config) any { return c.MaxRegistrations }, 5000},
		{"shutdownDrainTimeout", "shutdownDrainTimeout: 500ms", func(c *Config) any { return c.ShutdownDrainTimeout }, 500 * time.Millisecond},
		{"databaseURL", "databaseURL: postgres://xapsd@db.example.net/xapsd", func(c *Config) any { return c.DatabaseURL }, "postgres://xapsd@db.example.net/xapsd"},
		{"databaseURL keywords", "databaseURL: host=db dbname=xapsd", func(c *Config) any { return c.DatabaseURL }, "host=db dbname=xapsd"},
		{"databasePasswordFile", "databaseURL: postgres://db/xapsd\ndatabasePasswordFile: db.pass", func(c *Config) any { return c.DatabasePasswordFile }, func(d string) any { return filepath.Join(d, "db.pass") }},
		{"apnsMinInterval", "apnsMinInterval: 10s", func(c *Config) any { return c.APNsMinInterval }, 10 * time.Second},
		{"apnsMinInterval off", "apnsMinInterval: 0", func(c *Config) any { return c.APNsMinInterval }, time.Duration(0)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := writeConfig(t, tc.yaml+"\n")
			dir = filepath.Dir(p)
			c, _, err := Load(p)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := tc.want
			if f, ok := want.(func(string) any); ok {
				want = f(dir)
			}
			if got := tc.got(c); got != want {
				t.Errorf("got %#v, want %#v", got, want)
			}
		})
	}
}

// TestEveryKeyTested makes sure TestEveryKeyLandsInItsFieldInEverySpelling grows with the struct: every key must be named
// by at least one test case above (the case names start with the key).
func TestEveryKeyTested(t *testing.T) {
	src, err := os.ReadFile("config_test.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys() {
		if !regexp.MustCompile(`\{"` + regexp.QuoteMeta(k.name) + `[ "]`).Match(src) {
			t.Errorf("key %s has no case in TestEveryKeyLandsInItsFieldInEverySpelling", k.name)
		}
	}
}

func TestKeysMatchStruct(t *testing.T) {
	ks := keys()
	typ := reflect.TypeFor[Config]()
	// Every field but File is a key, and key names are unique ignoring case.
	if len(ks) != typ.NumField()-1 {
		t.Errorf("%d keys for %d fields", len(ks), typ.NumField())
	}
	seen := map[string]bool{}
	for _, k := range ks {
		l := strings.ToLower(k.name)
		if seen[l] {
			t.Errorf("key %s twice", k.name)
		}
		seen[l] = true
	}
	var secrets, paths []string
	for _, k := range ks {
		if k.secret {
			secrets = append(secrets, k.name)
		}
		if k.path {
			paths = append(paths, k.name)
		}
	}
	if got := strings.Join(secrets, " "); got != "certificateFileP12Password appleIdHashedPassword" {
		t.Errorf("secrets: %s", got)
	}
	if got := strings.Join(paths, " "); got != "databaseFile tlsCertfile tlsKeyfile certificateFileP12 certificateFilePem certificateFilePemKey keyFileP8 appleIdVendorCertificate appleIdVendorKey pluginSecretFile databasePasswordFile" {
		t.Errorf("paths: %s", got)
	}
}

// TestBadConfigs loads each testdata/bad/NAME.yaml; NAME.err holds one substring per line
// that the error must contain.
func TestBadConfigs(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no bad configs: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		t.Run(name, func(t *testing.T) {
			want, err := os.ReadFile(strings.TrimSuffix(f, ".yaml") + ".err")
			if err != nil {
				t.Fatalf("missing .err file: %v", err)
			}
			c, _, err := Load(f)
			if err == nil {
				t.Fatalf("loaded without error: %+v", c)
			}
			if c != nil {
				t.Error("a config came back along with the error")
			}
			msg := err.Error()
			abs, _ := filepath.Abs(f)
			if !strings.HasPrefix(msg, "config "+abs+": ") {
				t.Errorf("error does not name the file: %s", msg)
			}
			for _, line := range strings.Split(strings.TrimSpace(string(want)), "\n") {
				if !strings.Contains(msg, line) {
					t.Errorf("error lacks %q:\n%s", line, msg)
				}
			}
			// Secrets must never appear in messages, not even wrong ones.
			data, _ := os.ReadFile(f)
			var raw map[string]any
			_ = yaml.Unmarshal(data, &raw)
			for k, v := range raw {
				s, ok := v.(string)
				// (databasePasswordFile names a file: its name is no secret.)
				if ok && len(s) > 3 && strings.Contains(strings.ToLower(k), "password") && !strings.HasSuffix(k, "File") && strings.Contains(msg, s) {
					t.Errorf("error shows the secret %s: %s", k, msg)
				}
			}
		})
	}
}

// TestGoodConfigs loads each testdata/good/NAME.yaml without error; NAME.warn, when
// present, holds one substring per line that some warning must contain.
func TestGoodConfigs(t *testing.T) {
	files, err := filepath.Glob("testdata/good/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no good configs: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		t.Run(name, func(t *testing.T) {
			c, warnings, err := Load(f)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("loaded config does not validate: %v", err)
			}
			want, err := os.ReadFile(strings.TrimSuffix(f, ".yaml") + ".warn")
			if errors.Is(err, fs.ErrNotExist) {
				return
			}
			all := strings.Join(warnings, "\n")
			for _, line := range strings.Split(strings.TrimSpace(string(want)), "\n") {
				if !strings.Contains(all, line) {
					t.Errorf("warnings lack %q:\n%s", line, all)
				}
			}
		})
	}
}

// TestOldDaemonsSampleLoadsAsDefaultsWithItsValues checks the sample that the old xapsd shipped loads to the
// values it meant.
func TestOldDaemonsSampleLoadsAsDefaultsWithItsValues(t *testing.T) {
	c, warnings, err := Load("testdata/good/legacy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.File = c.File
	want.KeyFileTopic = "com.apple.mail.nil"
	want.KeyFileKeyID = "ABCDEFGH"
	want.KeyFileTeamID = "ABCDEFGH"
	want.ListenAddr = "::1" // written out in the legacy sample: it stays just that
	if *c != *want {
		t.Errorf("legacy sample:\n got %+v\nwant %+v", *c, *want)
	}
	if !slices.Equal(c.ListenAddresses(), []string{"[::1]:11619"}) || c.TLSListenAddress() != ":11620" {
		t.Errorf("addresses %s %s", c.ListenAddresses(), c.TLSListenAddress())
	}
	if c.TLSEnabled() {
		t.Error("empty tlsCertfile/tlsKeyfile must not enable TLS")
	}
	// The token-mode placeholders are harmless without keyFileP8: no warning about them.
	for _, w := range warnings {
		if strings.HasPrefix(w, "keyFile") {
			t.Errorf("unexpected warning %q", w)
		}
	}
}

func TestEmptyFileIsDefaults(t *testing.T) {
	for _, text := range []string{"", "\n\n", "# only a comment\n", "---\n", "~\n"} {
		p := writeConfig(t, text)
		c, _, err := Load(p)
		if err != nil {
			t.Fatalf("Load(%q): %v", text, err)
		}
		want := Default()
		want.File = p
		if *c != *want {
			t.Errorf("Load(%q) = %+v, want defaults", text, *c)
		}
	}
}

func TestMissingFileIsANotExistErrorNamingThePath(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nope.yaml")
	_, _, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), p) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load(missing) = %v, want a not-exist error naming %s", err, p)
	}
	if _, _, err := Load(""); err == nil {
		t.Error("Load(\"\") succeeded")
	}
}

func TestFileIsAbsolute(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x.yaml"), []byte("certificateFilePem: p.pem\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	c, _, err := Load("x.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.File != filepath.Join(dir, "x.yaml") || c.CertificateFilePem != filepath.Join(dir, "p.pem") {
		t.Errorf("File %q, certificateFilePem %q", c.File, c.CertificateFilePem)
	}
}

func TestAllProblemsReported(t *testing.T) {
	_, _, err := Load("testdata/bad/many.yaml")
	if err == nil {
		t.Fatal("no error")
	}
	var multi interface{ Unwrap() []error }
	if !errors.As(err, &multi) || len(multi.Unwrap()) != 5 {
		t.Fatalf("want 5 joined problems, got %v", err)
	}
}

func TestLoadWarnsOfIgnoredKeysAndCredentialMixUps(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // substrings, each in some warning; nil = no warnings at all
	}{
		{"dry run quiet", "apnsEndpoint: dry-run", nil},
		{"token mode quiet", "keyFileP8: k.p8\nkeyFileKeyId: ABCDE12345\nkeyFileTeamId: TEAM123456\nkeyFileTopic: com.apple.mail.XServer.8f2d8a5e-8a43-4c38-9d8e-0123456789ab", nil},
		{"no credential", "loglevel: info", []string{"no push credential set"}},
		{"unknown keys", "apnsEndpoint: dry-run\nfoo: 1\nBar: 2", []string{`line 2: unknown key "foo" ignored`, `line 3: unknown key "Bar" ignored`}},
		{"misspelt keys", "apnsEndpoint: dry-run\nlistenAdress: ::1\nchekInterval: 5\nlistenAddress: ::1", []string{
			`line 2: unknown key "listenAdress" ignored; did you mean listenAddr?`,
			`line 3: unknown key "chekInterval" ignored; did you mean checkInterval?`,
			`line 4: unknown key "listenAddress" ignored; did you mean listenAddr?`}},
		{"P12 wins over PEM", "certificateFileP12: a.p12\ncertificateFilePem: b.pem", []string{"certificateFileP12 and certificateFilePem are both set; only certificateFileP12 is used"}},
		{"PEM wins over P8", "certificateFilePem: b.pem\nkeyFileP8: k.p8\nkeyFileKeyId: K\nkeyFileTeamId: T\nkeyFileTopic: t", []string{"certificateFilePem and keyFileP8 are both set; only certificateFilePem is used"}},
		{"short dry-run topic", "apnsEndpoint: dry-run\ndryRunTopic: com.apple.mail.short", []string{"dryRunTopic: com.apple.mail.short: only 20 bytes"}},
		{"apple ID without vendor identity", "appleId: a@example.com\nappleIdHashedPassword: " + strings.Repeat("ab", 32), []string{"appleIdVendorCertificate and appleIdVendorKey are not", "docs/credentials.md"}},
		{"apple ID with vendor identity quiet", "appleId: a@example.com\nappleIdHashedPassword: " + strings.Repeat("ab", 32) + "\nappleIdVendorCertificate: v.pem\nappleIdVendorKey: v.key", nil},
		{"vendor identity without apple ID", "apnsEndpoint: dry-run\nappleIdVendorCertificate: v.pem\nappleIdVendorKey: v.key", []string{"ignored because appleId is not set"}},
		{"short topic ignored when PEM wins", "certificateFilePem: b.pem\nkeyFileP8: k.p8\nkeyFileKeyId: ABCDE12345\nkeyFileTeamId: TEAM123456\nkeyFileTopic: t", []string{"are both set"}},
		{"development endpoint", "apnsEndpoint: Development\ncertificateFilePem: b.pem", []string{"apnsEndpoint: development is Apple's sandbox", "iOS Mail registers with production"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, w := mustLoad(t, tc.yaml+"\n")
			if tc.want == nil && len(w) != 0 {
				t.Errorf("unexpected warnings %q", w)
			}
			all := strings.Join(w, "\n")
			for _, s := range tc.want {
				if !strings.Contains(all, s) {
					t.Errorf("warnings lack %q: %q", s, w)
				}
			}
			if tc.name == "short topic ignored when PEM wins" && strings.Contains(all, "keyFileTopic") {
				t.Errorf("warned about the unused token topic: %q", w)
			}
		})
	}
}

// A host:port in listenAddr is one mistake and gets one message, not a
// second one claiming the address listens beyond this machine.
func TestListenHostPortIsReportedOnce(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:11619", "[::1]:11619", "::1, 127.0.0.1:11700"} {
		c := Default()
		c.ListenAddr = addr
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "must be an IP address") && !strings.Contains(err.Error(), "write listenAddr") {
			t.Errorf("%q: %v, want the host:port hint", addr, err)
		} else if strings.Contains(err.Error(), "without authentication") {
			t.Errorf("%q: also reported as exposed: %v", addr, err)
		}
	}
}

// TestValidateAcceptsSaneValuesAndNamesTheKeyOfABadOne checks rules on hand-built configs, as the daemon builds them after
// overlaying flags: no file, so values print in Go form.
func TestValidateAcceptsSaneValuesAndNamesTheKeyOfABadOne(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		want   string // "" = valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"warning level", func(c *Config) { c.LogLevel = "WARNING" }, ""},
		{"fatal level", func(c *Config) { c.LogLevel = "fatal" }, "loglevel: fatal: must be"},
		{"log format", func(c *Config) { c.LogFormat = "logfmt" }, "logFormat: logfmt: must be text or json"},
		{"port", func(c *Config) { c.Port = 65536 }, "port: 65536: must be between 1 and 65535"},
		{"tls port", func(c *Config) { c.TLSPort = 0 }, "tlsPort: 0: must be between 1 and 65535"},
		{"check interval", func(c *Config) { c.CheckInterval = 0 }, "checkInterval: 0s: must be a positive number of seconds"},
		{"delay", func(c *Config) { c.Delay = -5 * time.Second }, "delay: -5s: must be a positive number of seconds"},
		{"bracketed listen address", func(c *Config) { c.ListenAddr = "[::1]" }, ""},
		{"zoned listen address", func(c *Config) { c.ListenAddr = "fe80::1%eth0"; c.AllowUnauthenticated = true }, ""},
		{"host name listen address", func(c *Config) { c.ListenAddr = "localhost" }, ""},
		{"three listen addresses", func(c *Config) { c.ListenAddr = "127.0.0.1, ::1, 192.0.2.7"; c.AllowUnauthenticated = true }, ""},
		{"one exposed among loopbacks needs the secret", func(c *Config) { c.ListenAddr = "127.0.0.1, ::1, 192.0.2.7" }, "listens beyond this machine without authentication"},
		{"listen address twice", func(c *Config) { c.ListenAddr = "::1, [::1]" }, "listenAddr: ::1, [::1]: ::1 is listed twice"},
		{"listen port alone", func(c *Config) { c.ListenAddr = "11619" }, "listenAddr: 11619: is a port, not an address: put it in port"},
		{"listen host:port", func(c *Config) { c.ListenAddr = "127.0.0.1:11700" }, "write listenAddr: 127.0.0.1 and port: 11700"},
		{"listen [v6]:port", func(c *Config) { c.ListenAddr = "[::1]:11700" }, `write listenAddr: "::1" and port: 11700`},
		{"listen :port", func(c *Config) { c.ListenAddr = ":11700" }, `write port: 11700, and listenAddr: "" for every interface`},
		{"listen host:port in a list", func(c *Config) { c.ListenAddr = "::1, 127.0.0.1:11700" }, "127.0.0.1:11700: must be an IP address"},
		{"TLS same port on a listed host", func(c *Config) {
			c.TLSCertFile, c.TLSKeyFile, c.TLSPort, c.TLSListenAddr = "c", "k", 11619, "::1"
		}, "tlsPort: 11619: is also the plain HTTP port"},
		{"metrics port alone", func(c *Config) { c.MetricsListenAddr = "11621" }, "metricsListenAddr: 11621: is a port without an address: write 127.0.0.1:11621"},
		{"endpoint prod", func(c *Config) { c.APNsEndpoint = "prod" }, "apnsEndpoint: prod: must be production, development, dry-run or an https://host[:port] URL; did you mean production?"},
		{"endpoint dryrun", func(c *Config) { c.APNsEndpoint = "dryrun" }, "did you mean dry-run?"},
		{"log level misspelt", func(c *Config) { c.LogLevel = "inof" }, "must be trace, debug, info, warn or error; did you mean info?"},
		{"push mailboxes misspelt", func(c *Config) { c.PushMailboxes = "INBX" }, "must be registered or inbox; did you mean inbox?"},
		{"TLS on other host same port", func(c *Config) {
			c.TLSCertFile, c.TLSKeyFile, c.TLSPort, c.TLSListenAddr = "c", "k", 11619, "192.0.2.1"
			c.ListenAddr = "127.0.0.1"
			c.PluginSecretFile = "/etc/xapsd/plugin.secret"
		}, ""},
		{"metrics off word", func(c *Config) { c.MetricsListenAddr = "off" }, ""},
		{"metrics host name", func(c *Config) { c.MetricsListenAddr = "localhost:9100" }, ""},
		{"endpoint query", func(c *Config) { c.APNsEndpoint = "https://h?x=1" }, "must not have a path, query or fragment"},
		{"endpoint user", func(c *Config) { c.APNsEndpoint = "https://u:p@h" }, "must not contain a user name"},
		{"endpoint upper-case word", func(c *Config) { c.APNsEndpoint = "DRY-RUN" }, ""},
		{"expiration max", func(c *Config) { c.APNsExpiration = 720 * time.Hour }, ""},
		{"expiration over", func(c *Config) { c.APNsExpiration = 720*time.Hour + time.Second }, "apnsExpiration: 720h0m1s: must be more than 0"},
		{"ttl", func(c *Config) { c.RegistrationTTL = time.Hour - 1 }, "registrationTTL: 59m59.999999999s: must be at least 1h"},
		{"shutdown", func(c *Config) { c.ShutdownTimeout = -time.Second }, "shutdownTimeout: -1s: must be positive"},
		{"hashed password upper-case hex", func(c *Config) { c.AppleID, c.AppleIDHashedPassword = "a@b", strings.Repeat("F", 64) }, ""},
		{"hashed password 63", func(c *Config) { c.AppleID, c.AppleIDHashedPassword = "a@b", strings.Repeat("f", 63) }, "<redacted, 63 characters>"},
		{"secret control char", func(c *Config) { c.CertificateFileP12Password = "a\x00b" }, "certificateFileP12Password: contains control characters"},
		{"P8 alone", func(c *Config) { c.KeyFileP8 = "k.p8" }, "keyFileKeyId: must be set when keyFileP8 is set"},
		{"vendor certificate alone", func(c *Config) { c.AppleIDVendorCertificate = "/v.pem" }, "appleIdVendorKey: must be set when appleIdVendorCertificate is set"},
		{"vendor key alone", func(c *Config) { c.AppleIDVendorKey = "/v.key" }, "appleIdVendorCertificate: must be set when appleIdVendorKey is set"},
		{"empty dry-run topic", func(c *Config) { c.DryRunTopic = "" }, "dryRunTopic: must not be empty"},
		{"min interval negative", func(c *Config) { c.APNsMinInterval = -time.Second }, "apnsMinInterval: -1s: must be between 0 (no minimum) and 1h"},
		{"min interval long", func(c *Config) { c.APNsMinInterval = time.Hour + time.Second }, "apnsMinInterval: 1h0m1s: must be between 0"},
		{"min interval hour", func(c *Config) { c.APNsMinInterval = time.Hour }, ""},
		{"max connections zero", func(c *Config) { c.APNsMaxConnections = 0 }, "apnsMaxConnections: 0: must be between 1 and 64"},
		{"max connections over", func(c *Config) { c.APNsMaxConnections = 65 }, "apnsMaxConnections: 65: must be between 1 and 64"},
		{"max connections one", func(c *Config) { c.APNsMaxConnections = 1 }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.change(c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tc.want != "" && err == nil:
				t.Errorf("no error, want %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Errorf("error %q lacks %q", err, tc.want)
			}
		})
	}
	// The secret itself never shows.
	c := Default()
	c.AppleID, c.AppleIDHashedPassword = "a@b", "topsecretvalue"
	if err := c.Validate(); err == nil || strings.Contains(err.Error(), "topsecretvalue") {
		t.Errorf("error %v", err)
	}
}

func TestAddressesAndEndpointAreDerivedFromTheKeys(t *testing.T) {
	c := Default()
	c.ListenAddr, c.Port = "", 80
	c.TLSListenAddr, c.TLSPort = "[2001:db8::1]", 443
	if got := c.ListenAddresses(); !slices.Equal(got, []string{":80"}) {
		t.Errorf("ListenAddresses %q", got)
	}
	c.ListenAddr = "[::1], 127.0.0.1 localhost"
	if got := c.ListenAddresses(); !slices.Equal(got, []string{"[::1]:80", "127.0.0.1:80", "localhost:80"}) {
		t.Errorf("ListenAddresses %q", got)
	}
	if got := c.TLSListenAddress(); got != "[2001:db8::1]:443" {
		t.Errorf("TLSListenAddress %q", got)
	}
	c.TLSKeyFile = "k"
	if !c.TLSEnabled() {
		t.Error("TLSEnabled false with only tlsKeyfile set, as the old daemon started it")
	}
	c.TLSKeyFile, c.TLSCertFile = "", "c"
	if !c.TLSEnabled() {
		t.Error("TLSEnabled false with only tlsCertfile set")
	}
	for _, tc := range []struct {
		endpoint, want string
		dryRun, bad    bool
	}{
		{"production", "https://api.push.apple.com", false, false},
		{"Production", "https://api.push.apple.com", false, false},
		{"development", "https://api.sandbox.push.apple.com", false, false},
		{"dry-run", "", true, false},
		{"Dry-Run", "", true, false},
		{"https://127.0.0.1:8443", "https://127.0.0.1:8443", false, false},
		{"https://apns.test/", "https://apns.test", false, false},
		{"HTTPS://[::1]:8443", "https://[::1]:8443", false, false},
		{"http://apns.test", "", false, true},
		{"sandbox", "", false, true},
		{"", "", false, true},
	} {
		c.APNsEndpoint = tc.endpoint
		got, err := c.APNsURL()
		if (err != nil) != tc.bad || got != tc.want || c.DryRun() != tc.dryRun {
			t.Errorf("%q: APNsURL = %q, %v; DryRun %v", tc.endpoint, got, err, c.DryRun())
		}
	}
	for _, tc := range []struct {
		addr string
		on   bool
	}{{"", false}, {"off", false}, {"Off", false}, {"127.0.0.1:1", true}} {
		c.MetricsListenAddr = tc.addr
		if c.MetricsEnabled() != tc.on {
			t.Errorf("MetricsEnabled(%q) = %v", tc.addr, !tc.on)
		}
	}
}

func TestFindTakesTheFirstFolderWithTheFileAndSkipsFolders(t *testing.T) {
	extra, etc := t.TempDir(), t.TempDir()
	touch := func(p string) {
		t.Helper()
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	_, err := Find([]string{extra, etc}, "")
	if err == nil {
		t.Fatal("found a file in empty folders")
	}
	for _, p := range []string{"xapsd.yaml", "xapsd.yml"} {
		if !strings.Contains(err.Error(), filepath.Join(extra, p)) || !strings.Contains(err.Error(), filepath.Join(etc, p)) {
			t.Errorf("error does not list %s in both folders: %v", p, err)
		}
	}

	touch(filepath.Join(etc, "xapsd.yml"))
	if got, err := Find([]string{extra, etc}, ""); err != nil || got != filepath.Join(etc, "xapsd.yml") {
		t.Errorf("Find = %q, %v; want the .yml in the second folder", got, err)
	}
	touch(filepath.Join(etc, "xapsd.yaml"))
	if got, _ := Find([]string{extra, etc}, "xapsd"); got != filepath.Join(etc, "xapsd.yaml") {
		t.Errorf("Find = %q; .yaml must win over .yml", got)
	}
	touch(filepath.Join(extra, "xapsd.yml"))
	if got, _ := Find([]string{extra, etc}, "xapsd"); got != filepath.Join(extra, "xapsd.yml") {
		t.Errorf("Find = %q; -configPath must win over /etc/xapsd", got)
	}

	touch(filepath.Join(etc, "test.yaml"))
	if got, _ := Find([]string{"", extra, etc}, "test"); got != filepath.Join(etc, "test.yaml") {
		t.Errorf("Find(test) = %q", got)
	}
	if got, _ := Find([]string{extra, etc}, "test.yaml"); got != filepath.Join(etc, "test.yaml") {
		t.Errorf("Find(test.yaml) = %q", got)
	}
	if err := os.Mkdir(filepath.Join(extra, "dir.yaml"), 0o700); err != nil {
		t.Fatal(err)
	}
	touch(filepath.Join(etc, "dir.yaml"))
	if got, _ := Find([]string{extra, etc}, "dir"); got != filepath.Join(etc, "dir.yaml") {
		t.Errorf("Find(dir) = %q; a folder named dir.yaml must be skipped", got)
	}
	if _, err := Find([]string{etc}, "sub/xapsd"); err == nil {
		t.Error("a name with a folder was accepted")
	}
	if _, err := Find(nil, "xapsd"); err == nil {
		t.Error("no folders, no error")
	}
}

func TestRedactedHidesSecretsAndShowsEffectiveValues(t *testing.T) {
	c := Default()
	c.File = "/etc/xapsd/xapsd.yaml"
	c.AppleID = "admin@example.com"
	c.AppleIDHashedPassword = strings.Repeat("ab", 32)
	c.CertificateFileP12 = "/etc/xapsd/push.p12"
	c.CertificateFileP12Password = "hunter2"
	out := c.Redacted()
	if strings.Contains(out, "hunter2") || strings.Contains(out, c.AppleIDHashedPassword) {
		t.Fatalf("secret in output:\n%s", out)
	}
	for _, want := range []string{
		"# effective xapsd configuration, loaded from /etc/xapsd/xapsd.yaml\n",
		"appleIdHashedPassword: <redacted>\n",
		"certificateFileP12Password: <redacted>\n",
		"appleId: admin@example.com\n",
		"checkInterval: 20s\n",
		"apnsExpiration: 24h\n",
		"registrationTTL: 720h\n",
		"port: 11619\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Every key that applies appears, in struct order.
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if name, _, ok := strings.Cut(l, ":"); ok && !strings.HasPrefix(l, "#") {
			lines = append(lines, name)
		}
	}
	var names []string
	for _, k := range keys() {
		if c.inapplicable(k.name) == "" {
			names = append(names, k.name)
		}
	}
	if strings.Join(lines, " ") != strings.Join(names, " ") {
		t.Errorf("keys in output:\n%v\nwant\n%v", lines, names)
	}
	// A database URL keeps everything but its password.
	for in, want := range map[string]string{
		"postgres://xapsd:s3cret@db.example.net:5432/xapsd?sslmode=require": "postgres://xapsd:<redacted>@db.example.net:5432/xapsd?sslmode=require",
		"host=db user=xapsd password='se cret' dbname=xapsd":                "host=db user=xapsd password=<redacted> dbname=xapsd",
		"host=db password=s3cret":                                           "host=db password=<redacted>",
		"postgres://xapsd@db/xapsd":                                         "postgres://xapsd@db/xapsd",
	} {
		c := Default()
		c.DatabaseURL = in
		if out := c.Redacted(); !strings.Contains(out, "databaseURL: "+want+"\n") && !strings.Contains(out, "databaseURL: '"+want+"'\n") {
			t.Errorf("databaseURL %q shows as:\n%s", in, out)
		}
	}
	// Unset secrets print as empty, not as "<redacted>", so an admin sees they are unset.
	if out := Default().Redacted(); strings.Contains(out, redactedText) {
		t.Errorf("unset secret shown as redacted:\n%s", out)
	}
}

// applicableOnly is c with the keys Redacted leaves out (inapplicable)
// at their defaults: what the printed configuration loads back to.
func applicableOnly(c *Config) Config {
	out, def := *c, Default()
	v, d := reflect.ValueOf(&out).Elem(), reflect.ValueOf(def).Elem()
	for _, k := range keys() {
		if c.inapplicable(k.name) != "" {
			v.Field(k.field).Set(d.Field(k.field))
		}
	}
	return out
}

// The effective configuration shows only what applies: no dryRunTopic
// with apnsEndpoint: production, no TLS port without TLS, no token details
// without a .p8 key; what it leaves out it names, with the reason.
func TestRedactedLeavesOutWhatDoesNothing(t *testing.T) {
	c := Default()
	c.CertificateFilePem = "/etc/xapsd/push.pem"
	c.KeyFileTopic = "com.apple.mail.XServer.sample"
	out := c.Redacted()
	for _, gone := range []string{"\ndryRunTopic:", "\ntlsPort:", "\ntlsListenAddr:", "\nkeyFileTopic:", "\nappleIdVendorKey:", "\ndatabasePasswordFile:"} {
		if strings.Contains(out, gone) {
			t.Errorf("output has %q, which does nothing here:\n%s", strings.TrimSpace(gone), out)
		}
	}
	for _, want := range []string{"\ncertificateFilePem: /etc/xapsd/push.pem\n", "\napnsEndpoint: production\n",
		"dryRunTopic: apnsEndpoint is not dry-run", "tlsListenAddr, tlsPort: no tlsCertfile", "keyFileTopic, keyFileKeyId, keyFileTeamId: no keyFileP8"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	c = Default()
	c.APNsEndpoint = EndpointDryRun
	if out := c.Redacted(); !strings.Contains(out, "\ndryRunTopic: "+c.DryRunTopic+"\n") {
		t.Errorf("dry-run without a credential file: dryRunTopic missing:\n%s", out)
	}
}

// TestRedactedRoundTrip: the printed config loads back to the same values,
// but for the keys it leaves out as doing nothing, which are at their
// defaults.
func TestRedactedRoundTrip(t *testing.T) {
	for _, f := range []string{"testdata/good/tls.yaml", "testdata/good/durations.yaml", "testdata/good/token-mode.yaml", "testdata/good/mixed-case.yaml", "testdata/good/metrics-off.yaml"} {
		c, _, err := Load(f)
		if err != nil {
			t.Fatal(err)
		}
		back, _, err := load([]byte(c.Redacted()), c.File)
		if err != nil {
			t.Fatalf("%s: reload: %v\n%s", f, err, c.Redacted())
		}
		if want := applicableOnly(c); *back != want {
			t.Errorf("%s: round trip:\n got %+v\nwant %+v", f, *back, want)
		}
	}
}

const samplePath = "../../configs/xapsd/xapsd.yaml"

// TestSampleHasEveryKey keeps the documented sample complete: every key must appear in it
// (commented out as "#key: default"), no line may name an unknown key, and uncommenting
// every key line must give exactly the defaults, so the values shown are true.
func TestSampleHasEveryKey(t *testing.T) {
	data, err := os.ReadFile(samplePath)
	if err != nil {
		t.Fatal(err)
	}
	keyLine := regexp.MustCompile(`^#?([A-Za-z0-9]+):( |$)`)
	known := map[string]bool{}
	for _, k := range keys() {
		known[k.name] = true
	}
	found := map[string]int{}
	var uncommented []string
	for i, line := range strings.Split(string(data), "\n") {
		if m := keyLine.FindStringSubmatch(line); m != nil {
			if !known[m[1]] {
				t.Errorf("%s:%d: unknown key %q", samplePath, i+1, m[1])
			}
			found[m[1]]++
			line = strings.TrimPrefix(line, "#")
		}
		uncommented = append(uncommented, line)
	}
	for _, k := range keys() {
		if found[k.name] != 1 {
			t.Errorf("key %s appears %d times in %s, want once", k.name, found[k.name], samplePath)
		}
	}

	c, _, err := Load(samplePath)
	if err != nil {
		t.Fatalf("sample as shipped: %v", err)
	}
	want := Default()
	want.File = c.File
	if *c != *want {
		t.Errorf("sample as shipped is not all defaults: %+v", *c)
	}
	c, _, err = load([]byte(strings.Join(uncommented, "\n")), c.File)
	if err != nil {
		t.Fatalf("sample with every key uncommented: %v", err)
	}
	if *c != *want {
		t.Errorf("sample's shown values differ from the defaults:\n got %+v\nwant %+v", *c, *want)
	}
}

func TestDevConfigIsLoopbackDryRunAndDebug(t *testing.T) {
	c, _, err := Load("../../configs/dev/xapsd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(c.File)
	if !slices.Equal(c.ListenAddresses(), []string{"127.0.0.1:11619"}) || c.DatabaseFile != filepath.Join(dir, "state", "database.json") ||
		!c.DryRun() || c.LogLevel != "debug" || c.CheckInterval != 2*time.Second || c.Delay != 5*time.Second ||
		c.MetricsListenAddr != "127.0.0.1:11621" {
		t.Errorf("dev config: %+v", *c)
	}
	if url, err := c.APNsURL(); url != "" || err != nil {
		t.Errorf("dev APNsURL = %q, %v", url, err)
	}
}

func TestDocsHaveEveryKey(t *testing.T) {
	data, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys() {
		if !strings.Contains(string(data), "### `"+k.name+"`") {
			t.Errorf("docs/configuration.md has no section ### `%s`", k.name)
		}
	}
}

func TestChangedKeysNamesTheKeysThatDifferButNotTheFile(t *testing.T) {
	a, b := Default(), Default()
	if got := ChangedKeys(a, b); len(got) != 0 {
		t.Errorf("no change: %v", got)
	}
	b.Port, b.Delay, b.LogLevel, b.File = 1, time.Minute, "debug", "/other.yaml"
	if got := ChangedKeys(a, b); !slices.Equal(got, []string{"loglevel", "port", "delay"}) {
		t.Errorf("ChangedKeys = %v", got)
	}
}

// The hint for an unquoted IPv6 address is a value that then passes the
// check: the line (or lines) it suggests, put in place of the bad one,
// load without a problem and mean the addresses written.
func TestIPv6HintPassesTheCheck(t *testing.T) {
	hint := regexp.MustCompile(`put an IPv6 address in quotes: (.*) \(unquoted`)
	for _, tc := range []struct {
		line string
		want func(*Config) string // "" when the loaded value is right
	}{
		{"listenAddr: [::1]", func(c *Config) string { return wantString(c.ListenAddr, "::1") }},
		{"listenAddr: [::1]:11619", func(c *Config) string {
			return wantString(c.ListenAddr, "::1") + wantString(fmt.Sprint(c.Port), "11619")
		}},
		{"listenAddr: [::1]:11700 # the old sample's", func(c *Config) string {
			return wantString(c.ListenAddr, "::1") + wantString(fmt.Sprint(c.Port), "11700")
		}},
		{"listenAddr: [::1], 127.0.0.1", func(c *Config) string { return wantString(c.ListenAddr, "::1, 127.0.0.1") }},
		{"metricsListenAddr: [::1]:11621", func(c *Config) string { return wantString(c.MetricsListenAddr, "[::1]:11621") }},
		{"tlsListenAddr: [::1]:11620", func(c *Config) string {
			return wantString(c.TLSListenAddr, "::1") + wantString(fmt.Sprint(c.TLSPort), "11620")
		}},
	} {
		const rest = "apnsEndpoint: dry-run\ntlsCertfile: c.pem\ntlsKeyfile: c.key\nallowUnauthenticated: true\n"
		_, _, err := load([]byte(tc.line+"\n"+rest), "/etc/xapsd/xapsd.yaml")
		m := hint.FindStringSubmatch(fmt.Sprint(err))
		if m == nil {
			t.Errorf("%s: no hint: %v", tc.line, err)
			continue
		}
		fixed := strings.ReplaceAll(m[1], " and ", "\n")
		c, _, err := load([]byte(fixed+"\n"+rest), "/etc/xapsd/xapsd.yaml")
		if err != nil {
			t.Errorf("%s: the hint %q does not pass the check: %v", tc.line, m[1], err)
			continue
		}
		if msg := tc.want(c); msg != "" {
			t.Errorf("%s: the hint %q means something else: %s", tc.line, m[1], msg)
		}
	}
}

func wantString(got, want string) string {
	if got != want {
		return fmt.Sprintf("got %q, want %q; ", got, want)
	}
	return ""
}
