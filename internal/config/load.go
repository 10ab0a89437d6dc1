package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/xapsd/xapsd/internal/regularfile"
)

// Load reads the YAML file at path, overlays it on Default(), resolves relative file names
// against the file's folder and validates the result. Warnings (unknown keys, settings that
// are legal but probably not meant) come back even when the error is nil. The error lists
// every problem found, not just the first.
func Load(path string) (*Config, []string, error) {
	if path == "" {
		return nil, nil, errors.New("load config: no file name given")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, nil, fmt.Errorf("load config %s: %w", path, err)
	}
	data, err := regularfile.ReadFile(abs, 0, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("load config: %w", err)
	}
	return load(data, abs)
}

// load is Load without the file system, so the fuzz target can drive it directly.
func load(data []byte, abs string) (*Config, []string, error) {
	c := Default()
	c.File = abs
	d := decoder{c: c, given: map[string]string{}}
	d.decode(data)
	d.normalize()
	d.resolvePaths(filepath.Dir(abs))
	d.problems = append(d.problems, c.validate(d.given)...)
	if len(d.problems) > 0 {
		return nil, d.warnings, &loadError{file: abs, problems: d.problems}
	}
	return c, append(d.warnings, c.warnings()...), nil
}

// loadError lists all problems of one file. It unwraps to each of them like errors.Join.
type loadError struct {
	file     string
	problems []error
}

func (e *loadError) Error() string {
	if len(e.problems) == 1 {
		return "config " + e.file + ": " + e.problems[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "config %s: %d problems:", e.file, len(e.problems))
	for _, p := range e.problems {
		b.WriteString("\n  ")
		b.WriteString(p.Error())
	}
	return b.String()
}

func (e *loadError) Unwrap() []error { return e.problems }

// Find implements the old daemon's discovery: NAME.yaml, then NAME.yml, in each
// folder in turn. The daemon passes the -configPath folder first and DefaultDir last; tests
// pass temporary folders. An empty name means DefaultName. A name that already ends in .yaml
// or .yml is also tried as given, since admins do write -configName xapsd.yaml.
func Find(dirs []string, name string) (string, error) {
	if name == "" {
		name = DefaultName
	}
	if strings.ContainsRune(name, '/') || strings.ContainsRune(name, filepath.Separator) {
		return "", fmt.Errorf("find config: name %q must not contain a folder; give the folder with -configPath", name)
	}
	names := []string{name + ".yaml", name + ".yml"}
	if ext := filepath.Ext(name); ext == ".yaml" || ext == ".yml" {
		names = append([]string{name}, names...)
	}
	var tried []string
	for _, dir := range dirs {
		if dir == "" {
			continue
		}
		for _, n := range names {
			p := filepath.Join(dir, n)
			tried = append(tried, p)
			fi, err := os.Stat(p)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				continue
			case err != nil:
				// Permission problems must surface: silently moving on to /etc/xapsd
				// would load a different file than the admin meant.
				return "", fmt.Errorf("find config: %w", err)
			case fi.IsDir():
				continue
			}
			return p, nil
		}
	}
	if len(tried) == 0 {
		return "", errors.New("find config: no folder to search")
	}
	return "", fmt.Errorf("find config: no file found; tried %s", strings.Join(tried, ", "))
}

// decoder overlays one YAML document on a Config, collecting problems and warnings.
type decoder struct {
	c        *Config
	given    map[string]string // key name -> value as written, for error messages
	problems []error
	warnings []string
}

func (d *decoder) problemf(format string, args ...any) {
	d.problems = append(d.problems, fmt.Errorf(format, args...))
}

func (d *decoder) decode(data []byte) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if !errors.Is(err, io.EOF) { // io.EOF: empty file or comments only, all defaults
			d.problems = append(d.problems, syntaxProblem(data, err))
		}
		return
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		// Viper read only the first document; a second one is most likely a paste error.
		d.problemf("parse YAML: the file holds more than one document (separated by ---); keep one")
		return
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	root = deref(root)
	if root == nil || isNull(root) {
		return
	}
	if root.Kind != yaml.MappingNode {
		d.problemf("line %d: the file must hold keys with values (key: value), found %s", root.Line, describe(root))
		return
	}
	byName := map[string]key{}
	for _, k := range keys() {
		byName[strings.ToLower(k.name)] = k
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		kn, vn := deref(root.Content[i]), deref(root.Content[i+1])
		if kn == nil || kn.Kind != yaml.ScalarNode {
			d.problemf("line %d: a key must be a plain name", root.Content[i].Line)
			continue
		}
		k, ok := byName[strings.ToLower(kn.Value)]
		if !ok {
			d.warnings = append(d.warnings, unknownKey(kn.Value, kn.Line))
			continue
		}
		// Keys are case-insensitive, so LogLevel and loglevel are the same key; which one
		// would win is not obvious to a reader, so refuse both.
		if first, dup := seen[k.name]; dup {
			d.problemf("%s: given more than once (lines %d and %d)", k.name, first, kn.Line)
			continue
		}
		seen[k.name] = kn.Line
		if vn == nil || isNull(vn) {
			continue // "key:" with no value keeps the default, like a missing key
		}
		d.set(k, vn)
	}
}

// deref follows YAML aliases (*anchor) to the node they name.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	if n != nil && n.Kind == yaml.AliasNode {
		return nil
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return "the value " + show(n.Value)
	}
	return "something else"
}

func (d *decoder) set(k key, n *yaml.Node) {
	if k.list && n.Kind == yaml.SequenceNode {
		joined, err := joinList(n)
		if err != nil {
			d.problemf("%s: %w (line %d)", k.name, err, n.Line)
			return
		}
		n = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: joined, Line: n.Line}
	}
	if n.Kind != yaml.ScalarNode {
		d.problemf("%s: expected a single value, found %s (line %d)", k.name, describe(n), n.Line)
		return
	}
	d.given[k.name] = n.Value
	f := reflect.ValueOf(d.c).Elem().Field(k.field)
	switch k.kind {
	case kindString:
		f.SetString(n.Value)
	case kindInt:
		v, err := parseInt(n)
		if err != nil {
			d.problemf("%s: %s: %w", k.name, show(n.Value), err)
			return
		}
		f.SetInt(int64(v))
	case kindDuration:
		v, err := parseDuration(n)
		if err != nil {
			d.problemf("%s: %s: %w", k.name, show(n.Value), err)
			return
		}
		f.SetInt(int64(v))
	case kindBool:
		v, err := parseBool(n)
		if err != nil {
			d.problemf("%s: %s: %w", k.name, show(n.Value), err)
			return
		}
		f.SetBool(v)
	}
}

// parseBool accepts YAML's true and false, quoted or not, in any case.
// YAML 1.1's yes/no/on/off are refused: "no" read as false has surprised
// enough people, and a switch that guards security must mean what it says.
func parseBool(n *yaml.Node) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(n.Value)) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, errors.New("must be true or false")
}

var errNotWhole = errors.New("not a whole number")

// parseInt accepts a YAML integer or a string holding one: the legacy sample had
// port: 11619, but the old daemon read ports as strings, so '11619' is common too.
func parseInt(n *yaml.Node) (int, error) {
	switch n.ShortTag() {
	case "!!int":
		var v int
		if err := n.Decode(&v); err != nil {
			return 0, errNotWhole
		}
		return v, nil
	case "!!str":
		v, err := strconv.Atoi(strings.TrimSpace(n.Value))
		if err != nil {
			return 0, errNotWhole
		}
		return v, nil
	}
	return 0, errNotWhole
}

var plainSeconds = regexp.MustCompile(`^[+-]?[0-9]+(\.[0-9]+)?$`)

// maxSeconds keeps seconds*1e9 inside an int64.
const maxSeconds = float64(math.MaxInt64 / int64(time.Second))

var errDuration = errors.New("not a number of seconds or a duration such as 90s, 5m or 24h")

// parseDuration accepts the legacy form (a number of seconds) and Go durations.
func parseDuration(n *yaml.Node) (time.Duration, error) {
	s := strings.TrimSpace(n.Value)
	switch n.ShortTag() {
	case "!!int", "!!float", "!!str":
	default:
		return 0, errDuration
	}
	if n.ShortTag() == "!!float" || plainSeconds.MatchString(s) {
		var f float64
		if err := n.Decode(&f); err != nil {
			if f, err = strconv.ParseFloat(s, 64); err != nil {
				return 0, errDuration
			}
		}
		if math.IsNaN(f) || math.Abs(f) > maxSeconds {
			return 0, errors.New("out of range")
		}
		return time.Duration(math.Round(f * float64(time.Second))), nil
	}
	if n.ShortTag() == "!!int" {
		// Hex or octal seconds: odd but a number.
		var v int64
		if err := n.Decode(&v); err != nil || math.Abs(float64(v)) > maxSeconds {
			return 0, errors.New("out of range")
		}
		return time.Duration(v) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errDuration
	}
	return d, nil
}

// show prints a value as the admin wrote it, quoted only where plain text would mislead.
func show(s string) string {
	if s == "" || strings.TrimSpace(s) != s || strings.IndexFunc(s, isControl) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// normalize turns the spellings the old daemon (or logrus) accepted into one canonical
// form, so the rest of xapsd compares against a single word.
func (d *decoder) normalize() {
	c := d.c
	c.LogLevel = strings.ToLower(c.LogLevel)
	switch c.LogLevel {
	case "warning":
		c.LogLevel = "warn"
	case "fatal", "panic":
		// The legacy sample listed these levels; they would hide every error xapsd logs.
		d.warnings = append(d.warnings, fmt.Sprintf("loglevel: %s: treated as error (xapsd logs problems at error level, so %s would hide them)", c.LogLevel, c.LogLevel))
		c.LogLevel = "error"
	}
	c.LogFormat = strings.ToLower(c.LogFormat)
	c.PushMailboxes = strings.ToLower(c.PushMailboxes)
	switch e := strings.ToLower(c.APNsEndpoint); e {
	case EndpointProduction, EndpointDevelopment, EndpointDryRun:
		c.APNsEndpoint = e
	}
	c.ListenAddr = strings.Join(splitHosts(c.ListenAddr), ", ")
	c.TLSListenAddr = stripBrackets(c.TLSListenAddr)
	if strings.EqualFold(c.MetricsListenAddr, "off") {
		c.MetricsListenAddr = ""
	}
}

// resolvePaths makes relative file names absolute against the config file's folder. The old
// daemon joined credential names onto /etc/xapsd/, so "push.pem" next to
// /etc/xapsd/xapsd.yaml still names /etc/xapsd/push.pem.
func (d *decoder) resolvePaths(dir string) {
	v := reflect.ValueOf(d.c).Elem()
	for _, k := range keys() {
		if !k.path {
			continue
		}
		f := v.Field(k.field)
		if p := f.String(); p != "" && !filepath.IsAbs(p) {
			f.SetString(filepath.Join(dir, p))
		}
	}
}
