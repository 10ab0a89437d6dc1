package docs

import (
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The Dovecot plugin is set up one way on Dovecot 2.3 (tokens in one
// xaps_config string, xaps_secret) and another on 2.4 (one xaps_* setting
// each, which the settings module declares). The snippets in
// configs/dovecot/ are tested against a real Dovecot of each version, so
// they are the truth the documentation is checked against here.
const (
	snippet23 = "configs/dovecot/2.3/95-xaps.conf"
	snippet24 = "configs/dovecot/2.4/95-xaps.conf"
)

// settingPairs are the plugin's settings on 2.3 and 2.4. Each name must
// be in its version's snippet, so the table cannot drift from them.
var settingPairs = []struct{ v23, v24 string }{
	{"url=", "xaps_url"},
	{"user_lookup=", "xaps_user_lookup"},
	{"max_retries=", "xaps_max_retries"},
	{"timeout_msecs=", "xaps_timeout"},
	{"mailbox_confirm=", "xaps_mailbox_confirm"},
	{"xaps_secret", "xaps_secret_file"},
}

var (
	// A setting name as the documentation writes it: a 2.3 token
	// ("url=", maybe at the start of a code span) or an xaps_ word.
	xapsWord  = regexp.MustCompile(`(?:^|[^A-Za-z0-9_])(xaps_[a-z0-9_]+)`)
	tokenWord = regexp.MustCompile(`(?:^|[\s\x60(])([a-z_]+=)`)
	// What says which Dovecot a paragraph is about: the version, or
	// docker-mailserver's release built on it (15: 2.3, 16: 2.4).
	versionMark = regexp.MustCompile(`\b2\.[34]\b|docker-mailserver 1[56]|\bon 1[56]\b`)
	fence       = regexp.MustCompile("^\\s*(```|~~~)")
)

// paragraphs splits Markdown into blocks separated by blank lines (a
// fenced block is one), each with its first line and its context: the
// heading above and, for a block introduced by a line ending in a colon
// ("On 16 (Dovecot 2.4):"), that line's paragraph.
type paragraph struct {
	line          int
	context, text string
}

// xapsSettings lists the xaps_ words of text that name a setting. A
// value (user_lookup=xaps_user, xaps_user_lookup = xaps_user) names a
// userdb field the admin chose, not a setting.
func xapsSettings(text string) []string {
	var out []string
	for _, m := range xapsWord.FindAllStringSubmatchIndex(text, -1) {
		if !strings.HasSuffix(strings.TrimRight(text[:m[2]], " "), "=") {
			out = append(out, text[m[2]:m[3]])
		}
	}
	return out
}

func paragraphs(text string) []paragraph {
	var out []paragraph
	var cur []string
	start, heading, inFence := 0, "", false
	flush := func() {
		if len(cur) > 0 {
			context := heading
			if n := len(out); n > 0 && strings.HasSuffix(out[n-1].text, ":") {
				context += "\n" + out[n-1].text
			}
			out = append(out, paragraph{line: start, context: context, text: strings.Join(cur, "\n")})
		}
		cur = nil
	}
	for i, l := range strings.Split(text, "\n") {
		switch {
		case fence.MatchString(l):
			if !inFence {
				flush()
				start = i + 1
			}
			cur = append(cur, l)
			inFence = !inFence
			if !inFence {
				flush()
			}
		case inFence:
			cur = append(cur, l)
		case strings.TrimSpace(l) == "":
			flush()
		case strings.HasPrefix(l, "#"):
			flush()
			heading = l
			out = append(out, paragraph{line: i + 1, context: l}) // ends a lead-in
		default:
			if len(cur) == 0 {
				start = i + 1
			}
			cur = append(cur, l)
		}
	}
	flush()
	return out
}

// TestDocsNameDovecotSettingsOfTheRightVersion checks every Markdown file
// for the plugin settings it names: each must exist in the snippets, and
// a paragraph that names a setting of one version only must say which
// version it is about, or name the other version's setting beside it. An
// admin on docker-mailserver 16 who reads "point url= at xapsd" has no
// url= to set.
func TestDocsNameDovecotSettingsOfTheRightVersion(t *testing.T) {
	r, err := loadRepo("../..", "test/docs/testdata/")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, f := range []string{snippet23, snippet24} {
		text, err := r.read(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range xapsSettings(text) {
			known[n] = true
		}
		for _, m := range tokenWord.FindAllStringSubmatch(text, -1) {
			known[m[1]] = true
		}
	}
	other := map[string]string{}
	for _, p := range settingPairs {
		for _, n := range []string{p.v23, p.v24} {
			if !known[n] {
				t.Fatalf("settingPairs names %s, which neither snippet has", n)
			}
		}
		other[p.v23], other[p.v24] = p.v24, p.v23
	}
	checked := 0
	for _, f := range r.files {
		if !strings.HasSuffix(f, ".md") {
			continue
		}
		text, err := os.ReadFile(filepath.Join(r.root, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range paragraphs(string(text)) {
			names := map[string]bool{}
			for _, n := range xapsSettings(p.text) {
				names[n] = true
			}
			for _, m := range tokenWord.FindAllStringSubmatch(p.text, -1) {
				if _, ok := other[m[1]]; ok {
					names[m[1]] = true
				}
			}
			for _, n := range slices.Sorted(maps.Keys(names)) {
				checked++
				counterpart, versioned := other[n]
				switch {
				case versioned && !versionMark.MatchString(p.text) && !versionMark.MatchString(p.context) && !names[counterpart]:
					t.Errorf("%s:%d: names %s without saying which Dovecot it is for (2.3 or 2.4) or naming %s beside it",
						f, p.line, n, counterpart)
				case !known[n] && strings.HasPrefix(n, "xaps_"):
					t.Errorf("%s:%d: names %s, which neither %s nor %s has", f, p.line, n, snippet23, snippet24)
				}
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d setting names found in the documentation; has the way they are written changed?", checked)
	}
}
