package docs

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestRepositoryReferences runs every check on this checkout. Each
// problem names the file, the line and what is missing. The fixture in
// testdata/planted is broken on purpose and left out.
func TestRepositoryReferences(t *testing.T) {
	r, err := loadRepo("../..", "test/docs/testdata/")
	if err != nil {
		t.Fatal(err)
	}
	// Guard against a walk that silently finds nothing to check.
	for _, must := range []string{"README.md", "docs/protocol.md", "docs/flow.md", "internal/apns/sender.go",
		"dovecot/src/xaps-imap-plugin.c", "test/docs/refs.go"} {
		if !slices.Contains(r.files, must) {
			t.Fatalf("the walk of the repository did not find %s; found %d files", must, len(r.files))
		}
	}
	problems, err := r.check()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// TestCheckFindsPlantedMistakes runs the checks on testdata/planted, a
// small repository with one of each mistake next to near misses that must
// pass, and wants exactly the mistakes, at the right lines: each line of
// testdata/planted.want starts one reported problem.
func TestCheckFindsPlantedMistakes(t *testing.T) {
	root := t.TempDir()
	if err := os.CopyFS(root, os.DirFS("testdata/planted")); err != nil {
		t.Fatal(err)
	}
	// Binary files are not read: this one would otherwise be a citation.
	if err := os.WriteFile(filepath.Join(root, "internal/pkg/blob.bin"), []byte("\x00spec \u00a71\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A citation of the notes folder beside the checkout, written here
	// rather than kept in testdata, so that no file of the repository
	// points outside it.
	outsideDir := "../" + "shared"
	if err := os.WriteFile(filepath.Join(root, "internal/pkg/cite.go"), []byte("package pkg\n\n// See "+outsideDir+"/notes.md.\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Generated paths count as existing; the folder itself is ignored.
	if err := os.MkdirAll(filepath.Join(root, "configs/dev/state"), 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := loadRepo(root)
	if err != nil {
		t.Fatal(err)
	}
	problems, err := r.check()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range problems {
		got = append(got, p.String())
	}
	data, err := os.ReadFile("testdata/planted.want")
	if err != nil {
		t.Fatal(err)
	}
	want := append(strings.Split(strings.TrimSpace(string(data)), "\n"),
		`internal/pkg/cite.go:3: cites "`+outsideDir+`"`)
	if len(got) != len(want) {
		t.Errorf("got %d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for _, w := range want {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, w) }) {
			t.Errorf("missing problem %q; got:\n%s", w, strings.Join(got, "\n"))
		}
	}
}

func TestHeadingSlug(t *testing.T) {
	for heading, want := range map[string]string{
		"Apple ID (`appleId`)":                        "apple-id-appleid",
		"Differences from freswa/dovecot-xaps-plugin": "differences-from-freswadovecot-xaps-plugin",
		"1. Build and install":                        "1-build-and-install",
		"The topic-only body of `/register`'s `200`":  "the-topic-only-body-of-registers-200",
		"What differs from the old xapsd":             "what-differs-from-the-old-xapsd",
		"Dovecot events: now or later":                "dovecot-events-now-or-later",
		"[Linked](other.md) *and* emphasised":         "linked-and-emphasised",
		"Extra pairs such as `sender`":                "extra-pairs-such-as-sender",
		"`snake_case` stays":                          "snake_case-stays",
		"Ärger im Ordner":                             "ärger-im-ordner",
	} {
		if got := headingSlug(heading); got != want {
			t.Errorf("headingSlug(%q) = %q, want %q", heading, got, want)
		}
	}
}
