// Package packaging checks what ships beside the binary: the example
// Prometheus rules and the Grafana dashboard must parse and use only
// metrics xapsd exports, and every exported metric must be documented. The install scripts themselves are
// tested by packaging_test.sh in this folder.
package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

const (
	rulesFile   = "../../configs/prometheus/xapsd.rules.yml"
	rulesTests  = "xapsd.rules.test.yml"
	metricsSrc  = "../../internal/metrics/metrics.go"
	operationsD = "../../docs/operations.md"
)

// ruleFile is the part of Prometheus's rule file format the example uses.
// Unknown keys are errors (KnownFields), so a typo such as "anotations"
// does not pass unnoticed.
type ruleFile struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

var (
	promDuration = regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)
	metricRef    = regexp.MustCompile(`\bxapsd_[a-z0-9_]+`)
	// Collector names in internal/metrics: Name: "xapsd_…" and the
	// gauge("xapsd_…", …) helper.
	metricDef = regexp.MustCompile(`(?:Name:\s*|gauge\()"(xapsd_[a-z0-9_]+)"`)
)

func loadRules(t *testing.T) *ruleFile {
	t.Helper()
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var rf ruleFile
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	return &rf
}

// exportedMetrics reads the metric names from the collectors' source, so a
// renamed metric breaks this test instead of an alert in production.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile(metricsSrc)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, m := range metricDef.FindAllSubmatch(src, -1) {
		out[string(m[1])] = true
	}
	if len(out) < 10 {
		t.Fatalf("found only %d metric names in %s; has the way metrics are declared changed?", len(out), metricsSrc)
	}
	return out
}

func balanced(s string) bool {
	var stack []rune
	pairs := map[rune]rune{')': '(', ']': '[', '}': '{'}
	inStr := false
	for _, r := range s {
		switch {
		case r == '"':
			inStr = !inStr
		case inStr:
		case r == '(' || r == '[' || r == '{':
			stack = append(stack, r)
		case pairs[r] != 0:
			if len(stack) == 0 || stack[len(stack)-1] != pairs[r] {
				return false
			}
			stack = stack[:len(stack)-1]
		}
	}
	return len(stack) == 0 && !inStr
}

func TestPrometheusRulesStructure(t *testing.T) {
	rf := loadRules(t)
	if len(rf.Groups) == 0 {
		t.Fatal("no groups")
	}
	seen := map[string]bool{}
	for _, g := range rf.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %q: needs a name and rules", g.Name)
		}
		for _, r := range g.Rules {
			name := r.Alert
			switch {
			case r.Alert == "" && r.Record == "":
				t.Errorf("group %s: a rule with neither alert nor record", g.Name)
				continue
			case r.Alert != "" && r.Record != "":
				t.Errorf("rule %s: both alert and record", r.Alert)
			case r.Record != "":
				name = r.Record
			}
			if seen[name] {
				t.Errorf("rule %s: defined twice", name)
			}
			seen[name] = true
			if strings.TrimSpace(r.Expr) == "" || !balanced(r.Expr) {
				t.Errorf("rule %s: expr empty or brackets unbalanced: %q", name, r.Expr)
			}
			if r.For != "" && !promDuration.MatchString(r.For) {
				t.Errorf("rule %s: for %q is not a Prometheus duration", name, r.For)
			}
			if r.Alert == "" {
				continue
			}
			if !strings.HasPrefix(r.Alert, "Xapsd") {
				t.Errorf("alert %s: name should start with Xapsd", r.Alert)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("alert %s: severity %q, want warning or critical", r.Alert, s)
			}
			for _, a := range []string{"summary", "description"} {
				if r.Annotations[a] == "" || !balanced(strings.ReplaceAll(r.Annotations[a], `\"`, "")) {
					t.Errorf("alert %s: annotation %s missing or with unbalanced brackets", r.Alert, a)
				}
			}
		}
	}
}

// usedMetrics lists the metrics a PromQL expression reads, each as
// internal/metrics declares it: a histogram's _bucket, _sum and _count
// series belong to the histogram.
func usedMetrics(expr string, have map[string]bool) []string {
	var out []string
	for _, m := range metricRef.FindAllString(expr, -1) {
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(m, suf); ok && have[b] {
				m = b
			}
		}
		out = append(out, m)
	}
	return out
}

func TestPrometheusRulesUseExportedMetrics(t *testing.T) {
	rf := loadRules(t)
	have := exportedMetrics(t)
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			for _, m := range usedMetrics(r.Expr, have) {
				if !have[m] {
					t.Errorf("rule %s%s uses %s, which internal/metrics does not export", r.Alert, r.Record, m)
				}
			}
		}
	}
}

func TestEveryMetricDocumented(t *testing.T) {
	doc, err := os.ReadFile(operationsD)
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for m := range exportedMetrics(t) {
		if !bytes.Contains(doc, []byte("`"+m+"`")) {
			missing = append(missing, m)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("%s does not document %s", operationsD, strings.Join(missing, ", "))
	}
}

// TestPromtool runs Prometheus's own checker and the rule unit tests when
// promtool is installed (Debian package prometheus); the checks above do
// not need it.
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus); PromQL not checked")
	}
	for _, args := range [][]string{
		{"check", "rules", rulesFile},
		{"test", "rules", rulesTests},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
