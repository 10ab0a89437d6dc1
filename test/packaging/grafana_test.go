package packaging

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

const dashboardFile = "../../configs/grafana/xapsd.json"

// dashboard is the part of Grafana's dashboard JSON model (the classic
// model that Grafana 10 and later import) that the checks below read.
type dashboard struct {
	ID            *int    `json:"id"`
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Time struct{ From, To string } `json:"time"`
}

type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Datasource *datasource     `json:"datasource"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *datasource              `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		Datasource *datasource `json:"datasource"`
		Expr       string      `json:"expr"`
		RefID      string      `json:"refId"`
	} `json:"targets"`
	FieldConfig *struct {
		Defaults  map[string]any `json:"defaults"`
		Overrides []any          `json:"overrides"`
	} `json:"fieldConfig"`
}

// The dashboard schema of Grafana 10.0; a dashboard of a newer schema
// could use what 10.0 does not know.
const grafana10Schema = 38

// The variable every query goes through, so that the admin picks the
// Prometheus data source at import and on the dashboard.
var promDS = datasource{Type: "prometheus", UID: "${datasource}"}

var (
	dashVar = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)
	// Grafana's own variables, which need no definition.
	builtinVars = map[string]bool{"__rate_interval": true, "__interval": true, "__range": true}
	panelTypes  = map[string]bool{"row": true, "timeseries": true, "stat": true, "gauge": true, "bargauge": true, "table": true, "text": true}
	uidChars    = regexp.MustCompile(`^[A-Za-z0-9_-]{1,40}$`)
)

func loadDashboard(t *testing.T) *dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return &d
}

// TestGrafanaDashboardIsImportable checks the dashboard as Grafana's
// import reads it: a title and a stable uid, no database id, a schema
// Grafana 10 knows, a Prometheus data source variable that every panel
// and query uses, panels with unique ids on the 24-column grid without
// overlapping, and only variables that are defined.
func TestGrafanaDashboardIsImportable(t *testing.T) {
	d := loadDashboard(t)
	switch {
	case d.Title == "" || !uidChars.MatchString(d.UID):
		t.Errorf("title %q, uid %q: both needed, the uid of at most 40 letters, digits, - and _", d.Title, d.UID)
	case d.ID != nil:
		t.Errorf("id %d: an exported dashboard has \"id\": null, so that import makes a new one", *d.ID)
	case d.SchemaVersion < 30 || d.SchemaVersion > grafana10Schema:
		t.Errorf("schemaVersion %d: want at most %d (Grafana 10.0)", d.SchemaVersion, grafana10Schema)
	case d.Time.From == "" || d.Time.To == "":
		t.Errorf("no time range")
	}
	defined := map[string]bool{}
	for _, v := range d.Templating.List {
		defined[v.Name] = true
		if v.Type == "query" && (v.Datasource == nil || *v.Datasource != promDS) {
			t.Errorf("variable %s: queries %v, want the data source variable", v.Name, v.Datasource)
		}
	}
	var dsVar *variable
	for i, v := range d.Templating.List {
		if v.Name == "datasource" {
			dsVar = &d.Templating.List[i]
		}
	}
	if dsVar == nil || dsVar.Type != "datasource" || string(dsVar.Query) != `"prometheus"` {
		t.Fatalf("no data source variable named datasource of type datasource for prometheus: %+v", dsVar)
	}
	ids := map[int]bool{}
	var boxes []panel
	queries := 0
	for _, p := range d.Panels {
		name := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if p.ID <= 0 || ids[p.ID] {
			t.Errorf("%s: id missing or used twice", name)
		}
		ids[p.ID] = true
		g := p.GridPos
		if !panelTypes[p.Type] || p.Title == "" || g.W < 1 || g.H < 1 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("%s: type %q, gridPos %+v", name, p.Type, g)
		}
		for _, b := range boxes {
			if g.X < b.GridPos.X+b.GridPos.W && b.GridPos.X < g.X+g.W && g.Y < b.GridPos.Y+b.GridPos.H && b.GridPos.Y < g.Y+g.H {
				t.Errorf("%s overlaps panel %d %q", name, b.ID, b.Title)
			}
		}
		boxes = append(boxes, p)
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || *p.Datasource != promDS || len(p.Targets) == 0 || p.FieldConfig == nil {
			t.Errorf("%s: data source %v, %d queries, fieldConfig %v", name, p.Datasource, len(p.Targets), p.FieldConfig != nil)
		}
		refs := map[string]bool{}
		for _, q := range p.Targets {
			queries++
			if q.Datasource == nil || *q.Datasource != promDS || q.RefID == "" || refs[q.RefID] {
				t.Errorf("%s: query %q: data source %v, refId %q", name, q.RefID, q.Datasource, q.RefID)
			}
			refs[q.RefID] = true
			if strings.TrimSpace(q.Expr) == "" || !balanced(q.Expr) {
				t.Errorf("%s: query %s empty or brackets unbalanced: %q", name, q.RefID, q.Expr)
			}
			for _, m := range dashVar.FindAllStringSubmatch(q.Expr, -1) {
				if !defined[m[1]] && !builtinVars[m[1]] {
					t.Errorf("%s: query %s uses $%s, which the dashboard does not define", name, q.RefID, m[1])
				}
			}
		}
	}
	if queries < 10 {
		t.Errorf("only %d queries", queries)
	}
}

// dashboardExprs lists every PromQL expression of the dashboard's panels
// and variables, with the panel it is in.
func dashboardExprs(d *dashboard) map[string]string {
	out := map[string]string{}
	for _, p := range d.Panels {
		for _, q := range p.Targets {
			out[q.Expr] = fmt.Sprintf("panel %q", p.Title)
		}
	}
	for _, v := range d.Templating.List {
		var q struct{ Query string }
		if v.Type == "query" && json.Unmarshal(v.Query, &q) == nil {
			out[q.Query] = "variable " + v.Name
		}
	}
	return out
}

// TestGrafanaDashboardUsesExportedMetrics: every metric the dashboard
// queries is one internal/metrics exports, and it shows what an admin
// looks for (pushes, APNs, the queue, pauses, registrations, the plugin's
// requests, the registry's durability, the certificate).
func TestGrafanaDashboardUsesExportedMetrics(t *testing.T) {
	d := loadDashboard(t)
	have := exportedMetrics(t)
	used := map[string]bool{}
	for expr, where := range dashboardExprs(d) {
		for _, m := range usedMetrics(expr, have) {
			used[m] = true
			if !have[m] {
				t.Errorf("%s queries %s, which internal/metrics does not export", where, m)
			}
		}
	}
	for _, m := range []string{"xapsd_apns_pushes_total", "xapsd_apns_push_duration_seconds", "xapsd_apns_queue_depth",
		"xapsd_apns_sending_paused", "xapsd_registry_users", "xapsd_registry_registrations", "xapsd_pluginapi_requests_total",
		"xapsd_registry_damaged", "xapsd_registry_writable", "xapsd_registry_following", "xapsd_credential_expiry_seconds"} {
		if !used[m] {
			t.Errorf("the dashboard does not show %s", m)
		}
	}
}

// TestGrafanaDashboardPromQL has Prometheus's own parser check every
// query, with the dashboard's variables filled in as Grafana would, when
// promtool is installed (Debian package prometheus; make test installs
// it).
func TestGrafanaDashboardPromQL(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("SKIPPED: promtool not installed (apt-get install prometheus); the dashboard's PromQL not parsed")
	}
	fill := strings.NewReplacer("$__rate_interval", "5m", "$job", ".*", "$instance", ".*")
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for expr := range dashboardExprs(loadDashboard(t)) {
		if strings.HasPrefix(expr, "label_values(") {
			continue // a Grafana function, not PromQL
		}
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query%d", len(rules)), Expr: fill.Replace(expr)})
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	if err := enc.Encode(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules on the dashboard's queries: %v\n%s", err, out)
	}
}
