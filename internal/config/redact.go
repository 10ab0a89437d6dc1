package config

import (
	"reflect"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// redactedText replaces secrets in Redacted's output.
const redactedText = "<redacted>"

// Redacted prints the effective configuration as YAML with the legacy key names, every key
// that applies (see inapplicable) in struct order, for --check-config. Secrets that are set
// show as "<redacted>". A closing comment names the keys left out and why. Apart from the
// secrets, the output loads back to a configuration that does the same: equal but for the
// keys left out, which are at their defaults.
func (c *Config) Redacted() string {
	doc := &yaml.Node{Kind: yaml.MappingNode}
	if c.File != "" {
		doc.HeadComment = "effective xapsd configuration, loaded from " + c.File
	} else {
		doc.HeadComment = "effective xapsd configuration, built-in defaults"
	}
	v := reflect.ValueOf(c).Elem()
	var reasons []string             // in the order of the first key left out for each
	leftOut := map[string][]string{} // reason → keys
	for _, k := range keys() {
		if why := c.inapplicable(k.name); why != "" {
			if leftOut[why] == nil {
				reasons = append(reasons, why)
			}
			leftOut[why] = append(leftOut[why], k.name)
			continue
		}
		f := v.Field(k.field)
		var value any
		switch k.kind {
		case kindString:
			s := f.String()
			if k.secret && s != "" {
				s = redactedText
			}
			if k.dburl {
				s = redactDatabaseURL(s)
			}
			value = s
		case kindInt:
			value = int(f.Int())
		case kindDuration:
			value = formatDuration(time.Duration(f.Int()))
		case kindBool:
			value = f.Bool()
		}
		var vn yaml.Node
		if err := vn.Encode(value); err != nil {
			// Encoding a string or an int cannot fail.
			panic("config: encode " + k.name + ": " + err.Error())
		}
		doc.Content = append(doc.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: k.name}, &vn)
	}
	if len(reasons) > 0 {
		foot := []string{"left out, because they do nothing here:"}
		for _, why := range reasons {
			foot = append(foot, "  "+strings.Join(leftOut[why], ", ")+": "+why)
		}
		doc.FootComment = strings.Join(foot, "\n")
	}
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	if err := enc.Encode(doc); err != nil {
		panic("config: encode: " + err.Error())
	}
	if err := enc.Close(); err != nil {
		panic("config: encode: " + err.Error())
	}
	if !strings.HasSuffix(b.String(), "\n") {
		b.WriteString("\n") // yaml.v3 ends a foot comment without one
	}
	return b.String()
}

// inapplicable says why the key name does nothing with c, or "" when it
// applies: a key that only matters together with another setting, such as
// dryRunTopic with apnsEndpoint: production, would only make the reader
// wonder what it does.
func (c *Config) inapplicable(name string) string {
	credentialFile := c.CertificateFileP12 != "" || c.CertificateFilePem != "" || c.KeyFileP8 != ""
	switch name {
	case "dryRunTopic":
		if !c.DryRun() {
			return "apnsEndpoint is not dry-run"
		}
		if credentialFile {
			return "the credential gives the topic"
		}
	case "tlsListenAddr", "tlsPort":
		if !c.TLSEnabled() {
			return "no tlsCertfile"
		}
	case "certificateFileP12Password":
		if c.CertificateFileP12 == "" {
			return "no certificateFileP12"
		}
	case "keyFileKeyId", "keyFileTeamId", "keyFileTopic":
		if c.KeyFileP8 == "" {
			return "no keyFileP8"
		}
	case "appleIdHashedPassword", "appleIdVendorCertificate", "appleIdVendorKey":
		if c.AppleID == "" {
			return "no appleId"
		}
	case "metricsPprof":
		if !c.MetricsEnabled() {
			return "metricsListenAddr is off"
		}
	case "databasePasswordFile":
		if c.DatabaseURL == "" {
			return "no databaseURL"
		}
	case "registryCompactAfter":
		if c.DatabaseURL != "" {
			return "the registry is in databaseURL"
		}
	}
	return ""
}

// formatDuration drops the zero tails Go prints ("24h0m0s" becomes "24h").
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// databasePassword finds the password in a postgres:// URL
// (user:password@host) or a keyword string (password=...).
var databasePassword = regexp.MustCompile(`(^[a-z]+://[^:/@]*:)([^@]*)(@)|((?:^|\s)password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// redactDatabaseURL keeps a database URL readable (host, database, user)
// and hides only its password.
func redactDatabaseURL(s string) string {
	return databasePassword.ReplaceAllStringFunc(s, func(m string) string {
		sub := databasePassword.FindStringSubmatch(m)
		if sub[1] != "" {
			return sub[1] + redactedText + sub[3]
		}
		return sub[4] + redactedText
	})
}
