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
// in struct order, for --check-config and the startup log. Secrets that are set show as
// "<redacted>". Apart from the secrets, the output loads back to the same configuration.
func (c *Config) Redacted() string {
	doc := &yaml.Node{Kind: yaml.MappingNode}
	if c.File != "" {
		doc.HeadComment = "effective xapsd configuration, loaded from " + c.File
	} else {
		doc.HeadComment = "effective xapsd configuration, built-in defaults"
	}
	v := reflect.ValueOf(c).Elem()
	for _, k := range keys() {
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
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	if err := enc.Encode(doc); err != nil {
		panic("config: encode: " + err.Error())
	}
	if err := enc.Close(); err != nil {
		panic("config: encode: " + err.Error())
	}
	return b.String()
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
