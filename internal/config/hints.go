package config

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/xapsd/xapsd/internal/suggest"
)

// The messages in this file turn what the YAML parser and the checks find into what an
// admin can act on: the line where the problem is, and the likely fix where one is known.

// joinList turns a YAML list of hosts (listenAddr: [127.0.0.1, "::1"]) into the
// comma-separated form the key holds.
func joinList(n *yaml.Node) (string, error) {
	var items []string
	for _, it := range n.Content {
		it = deref(it)
		if it == nil || it.Kind != yaml.ScalarNode || isNull(it) || strings.TrimSpace(it.Value) == "" {
			return "", errors.New(`every item of the list must be one address; "" alone (not in a list) means every interface`)
		}
		items = append(items, it.Value)
	}
	if len(items) == 0 {
		return "", errors.New(`an empty list; "" means every interface`)
	}
	return strings.Join(items, ", "), nil
}

// unknownKey is the warning for a key xapsd does not know, with the key it most likely
// means.
func unknownKey(name string, line int) string {
	var names []string
	for _, k := range keys() {
		names = append(names, k.name)
	}
	return fmt.Sprintf("line %d: unknown key %q ignored", line, name) + suggest.Hint(name, names...)
}

var yamlLine = regexp.MustCompile(`^line ([0-9]+): `)

// maxSearchLines bounds the search for the line of a syntax error: it parses every
// prefix of the file, which is cheap for a configuration file and pointless for a
// large file that is not one.
const maxSearchLines = 500

// syntaxProblem reports a YAML syntax error with the line it is on and a hint where the
// cause is a common one. The parser's own line numbers cannot be trusted: for errors
// found by the parser (rather than the scanner) it counts from 0 and leaves the number
// out on the first line. The line is found instead as the shortest prefix of the file
// that fails in the same way.
func syntaxProblem(data []byte, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		msg = msg[len(m[0]):]
		line, _ = strconv.Atoi(m[1])
	}
	lines := strings.Split(string(data), "\n")
	if len(lines) <= maxSearchLines {
		for k := 1; k <= len(lines); k++ {
			var n yaml.Node
			perr := yaml.Unmarshal([]byte(strings.Join(lines[:k], "\n")+"\n"), &n)
			if perr == nil {
				continue
			}
			pmsg := yamlLine.ReplaceAllString(strings.TrimPrefix(perr.Error(), "yaml: "), "")
			if pmsg == msg {
				line = k
				break
			}
		}
	}
	where := "YAML syntax error"
	if line > 0 {
		where = fmt.Sprintf("line %d: YAML syntax error", line)
	}
	if h := syntaxHint(lines, line, msg); h != "" {
		return fmt.Errorf("%s: %s; %s", where, msg, h)
	}
	return fmt.Errorf("%s: %s", where, msg)
}

var (
	// An IPv6 address in brackets without quotes: YAML reads [ as the start of a list.
	unquotedBracket = regexp.MustCompile(`^\s*[A-Za-z0-9]+:\s*\[[^\]'"]*:[^\]'"]*\]`)
	keyValue        = regexp.MustCompile(`^\s*([A-Za-z0-9]+):\s*(.*)$`)
)

// syntaxHint names the likely fix for the syntax error on line (1-based; 0 = unknown).
func syntaxHint(lines []string, line int, msg string) string {
	at := func(i int) string {
		if i >= 1 && i <= len(lines) {
			return lines[i-1]
		}
		return ""
	}
	// The bracket problem shows on its own line or, for the parser, on the next one.
	for _, i := range []int{line, line - 1} {
		if l := at(i); unquotedBracket.MatchString(l) {
			m := keyValue.FindStringSubmatch(l)
			return "put an IPv6 address in quotes: " + bracketFix(m[1], m[2]) + " (unquoted, [ starts a YAML list)"
		}
	}
	for _, i := range []int{line, line - 1} {
		if unclosed(at(i)) {
			return fmt.Sprintf("a quote or bracket opened on line %d is not closed", i)
		}
	}
	l := at(line)
	switch {
	case strings.HasPrefix(strings.TrimLeft(l, " "), "\t") || (strings.Contains(msg, "cannot start any token") && strings.Contains(l, "\t")):
		return "indent with spaces: YAML does not allow tabs there"
	case strings.Contains(msg, "mapping values are not allowed"):
		return `a value that contains ": " must be in quotes`
	case strings.Contains(msg, "cannot start any token"):
		return "a value that starts with @, ` or % must be in quotes"
	}
	return ""
}

// bracketedHost is one address of a list as the old sample wrote it:
// [::1], maybe with a port ([::1]:11619).
var bracketedHost = regexp.MustCompile(`^\[([^\]]*)\](?::([0-9]+))?$`)

// bracketFix is what to write instead of "key: value" when value has an
// IPv6 address in brackets, as one or more "key: value" joined by " and ":
// a value the checks then accept. metricsListenAddr takes host:port, so
// its value only needs quotes; the plugin's listeners take addresses
// without brackets, and a port written with one goes in its own key.
func bracketFix(key, value string) string {
	value, _, _ = strings.Cut(value, " #")
	value = strings.TrimSpace(value)
	portKey := ""
	switch strings.ToLower(key) {
	case "listenaddr":
		portKey = "port"
	case "tlslistenaddr":
		portKey = "tlsPort"
	default:
		return fmt.Sprintf("%s: %q", key, value)
	}
	var hosts, ports []string
	for _, h := range strings.Split(value, ",") {
		h = strings.TrimSpace(h)
		if m := bracketedHost.FindStringSubmatch(h); m != nil {
			h = m[1]
			if m[2] != "" && !slices.Contains(ports, m[2]) {
				ports = append(ports, m[2])
			}
		}
		hosts = append(hosts, h)
	}
	fix := fmt.Sprintf("%s: %q", key, strings.Join(hosts, ", "))
	if len(ports) == 1 {
		fix += fmt.Sprintf(" and %s: %s", portKey, ports[0])
	}
	return fix
}

// unclosed reports whether a line opens a quote or a flow list or mapping that it does
// not close, ignoring a comment.
func unclosed(l string) bool {
	depth := 0
	var quote rune
	for i, r := range l {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
		case r == '#' && (i == 0 || l[i-1] == ' '):
			return depth > 0
		case r == '[' || r == '{':
			depth++
		case r == ']' || r == '}':
			depth--
		}
	}
	return quote != 0 || depth > 0
}
