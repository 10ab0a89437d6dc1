package docs

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/cli"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

var (
	// A claim of an exit code in prose: "exits 1", "exit 0", "exit status 1",
	// "exits with 2".
	exitClaim = regexp.MustCompile(`\bexit(?:s|ed)?(?: status| code)?(?: with)? ([0-9])\b`)
	// Words that make a claim about a push credential.
	credentialWord = regexp.MustCompile(`(?i)\b(credential|certificate|expired)`)
	// A line of an "Exit codes:" block in xapsd's help: "  1  failed: …".
	helpExitLine = regexp.MustCompile(`^  ([0-9])  (.*)$`)
	listItem     = regexp.MustCompile(`^\s*([*-]|[0-9]+\.) `)
)

// claimUnit is a piece of text that states exit codes: a sentence of a
// Markdown paragraph, a list item (its sentences may say "it" for the
// credential named earlier), a table row, or one code of a help text's
// "Exit codes:" block.
type claimUnit struct {
	where string
	text  string
	codes []int
}

func unitsOfMarkdown(file, text string) []claimUnit {
	var out []claimUnit
	add := func(line int, s string) {
		u := claimUnit{where: file + ":" + strconv.Itoa(line), text: s}
		for _, m := range exitClaim.FindAllStringSubmatch(s, -1) {
			n, _ := strconv.Atoi(m[1])
			u.codes = append(u.codes, n)
		}
		if len(u.codes) > 0 {
			out = append(out, u)
		}
	}
	for _, p := range paragraphs(text) {
		lines := strings.Split(p.text, "\n")
		switch {
		case fence.MatchString(lines[0]):
		case strings.HasPrefix(strings.TrimSpace(lines[0]), "|"):
			for i, l := range lines {
				add(p.line+i, l)
			}
		default:
			start, item := 0, ""
			flush := func(end int) {
				if item == "" {
					return
				}
				if listItem.MatchString(lines[start]) {
					add(p.line+start, item)
				} else {
					for _, s := range strings.SplitAfter(item, ". ") {
						add(p.line+start, s)
					}
				}
				item = ""
			}
			for i, l := range lines {
				if listItem.MatchString(l) {
					flush(i)
					start = i
				}
				item += " " + strings.TrimSpace(l)
			}
			flush(len(lines))
		}
	}
	return out
}

func unitsOfHelp(where, help string) []claimUnit {
	var out []claimUnit
	in := false
	for _, l := range strings.Split(help, "\n") {
		switch m := helpExitLine.FindStringSubmatch(l); {
		case strings.HasSuffix(l, "Exit codes:"):
			in = true
		case !in:
		case m != nil:
			n, _ := strconv.Atoi(m[1])
			out = append(out, claimUnit{where: where, text: m[2], codes: []int{n}})
		case strings.HasPrefix(l, "     ") && len(out) > 0:
			out[len(out)-1].text += " " + strings.TrimSpace(l)
		default:
			in = false
		}
	}
	return out
}

func runXapsd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := cli.Main(args, cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb})
	return code, out.String(), errb.String()
}

// TestCheckConfigExitCodesAreOneTruth runs --check-config the way the
// docs describe it (a good file, a file with a problem, an expired push
// certificate, a misspelt option) and checks what the help and every
// Markdown file say about exit codes against what it did: an expired or
// missing credential is a warning that a start survives, so any claim of
// an exit code beside a word about credentials must name that code.
func TestCheckConfigExitCodesAreOneTruth(t *testing.T) {
	dir := t.TempDir()
	ca, err := testpki.NewCA("exit code test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(testpki.IssueOptions{UID: "com.apple.mail.XServer.11111111-2222-4333-8444-555555555555",
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour), IsClient: true})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "push.pem"), leaf.CertPEM(), 0o600)
	os.WriteFile(filepath.Join(dir, "push.key"), leaf.KeyPEM(), 0o600)
	base := "metricsListenAddr: off\ndatabaseFile: " + filepath.Join(dir, "state", "database.json") + "\n"
	config := func(name, extra string) string {
		p := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(p, []byte(base+extra), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	run := func(what string, args ...string) int {
		code, _, errOut := runXapsd(args...)
		t.Logf("--check-config with %s: exit %d (%s)", what, code, strings.TrimSpace(errOut))
		return code
	}
	good := run("a good file", "--check-config", "--config", config("good", "apnsEndpoint: dry-run\n"))
	bad := run("a problem", "--check-config", "--config", config("bad", "delay: -5\n"))
	expired := run("an expired certificate", "--check-config", "--config", config("expired", "certificateFilePem: push.pem\ncertificateFilePemKey: push.key\n"))
	usage := run("a misspelt option", "--check-config", "--conifg", config("good", ""))
	if good != 0 || bad != 1 || usage != 2 {
		t.Fatalf("exit codes good=%d bad=%d usage=%d, want 0, 1, 2", good, bad, usage)
	}

	_, help, _ := runXapsd("help")
	units := unitsOfHelp("xapsd help", help)
	if len(units) < 3 {
		t.Fatalf("found %d exit codes in xapsd help:\n%s", len(units), help)
	}
	r, err := loadRepo("../..", "test/docs/testdata/")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range r.files {
		if strings.HasSuffix(f, ".md") {
			text, err := r.read(f)
			if err != nil {
				t.Fatal(err)
			}
			units = append(units, unitsOfMarkdown(f, text)...)
		}
	}
	credentialClaims := 0
	for _, u := range units {
		if !credentialWord.MatchString(u.text) {
			continue
		}
		credentialClaims++
		for _, c := range u.codes {
			if c != expired {
				t.Errorf("%s: says exit %d about a credential, but a credential that does not load exits %d: %q", u.where, c, expired, strings.TrimSpace(u.text))
			}
		}
	}
	if credentialClaims < 2 {
		t.Errorf("found %d claims of an exit code about a credential; has the way they are written changed?", credentialClaims)
	}
}
