// Package docs checks that the repository's references stay true, so that
// it can be read on its own (issue 14):
//
//   - no comment, doc or test cites a document outside the repository: no
//     numbered sections of a spec (the section sign is allowed only after
//     "RFC nnnn"), no paths into a shared folder beside the checkout;
//   - every link into docs/*.md, from code or from Markdown, names a file
//     and an anchor that exist;
//   - every relative Markdown link, and every repository path a Markdown
//     file names in backticks (`configs/xapsd/xapsd.yaml`, `internal/apns`),
//     exists.
//
// A path counts as a repository path when its first element is a top-level
// folder of the repository (or a folder beside the Markdown file naming
// it): /etc/xapsd/xapsd.yaml, apple-push/mail.pem or docker-data/… are
// paths on an admin's machine and are left alone. Paths below a folder
// that .gitignore lists (build output such as dovecot/build/, the dev
// state in configs/dev/state/) are generated, so they count as existing.
package docs

import (
	"bytes"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"unicode"
)

// problem is one broken reference, reported as file:line: what.
type problem struct {
	File string // slash path relative to the repository root
	Line int
	What string
}

func (p problem) String() string { return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.What) }

// repo is the part of a checkout the checks look at.
type repo struct {
	root     string
	files    []string        // text files, slash paths relative to root, sorted
	exists   map[string]bool // every file and folder walked (slash paths)
	topDirs  map[string]bool // first elements of the files' paths
	ignored  []string        // folder prefixes from .gitignore, with a trailing slash
	suffixes []string        // file suffixes from .gitignore ("*.test")
	anchors  map[string]map[string]bool
}

// loadRepo walks root. It skips .git, what .gitignore lists, binary files
// (a NUL byte in the first 8 KiB) and the folders in skip (slash paths
// ending in "/").
func loadRepo(root string, skip ...string) (*repo, error) {
	r := &repo{root: root, exists: map[string]bool{"": true}, topDirs: map[string]bool{},
		anchors: map[string]map[string]bool{}}
	if err := r.readGitignore(); err != nil {
		return nil, err
	}
	r.ignored = append(r.ignored, skip...)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".git") && d.Name() != ".gitignore" {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			if r.isIgnored(rel + "/") {
				return filepath.SkipDir
			}
			r.exists[rel] = true
			return nil
		}
		if r.isIgnored(rel) || !d.Type().IsRegular() {
			return nil
		}
		r.exists[rel] = true
		if i := strings.IndexByte(rel, '/'); i > 0 {
			r.topDirs[rel[:i]] = true
		}
		text, err := isText(p)
		if err != nil {
			return err
		}
		if text {
			r.files = append(r.files, rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walk %s: %w", root, err)
	}
	sort.Strings(r.files)
	return r, nil
}

// readGitignore understands the two forms the repository's .gitignore
// uses: "/folder/" (or "folder/") and "*.suffix".
func (r *repo) readGitignore() error {
	data, err := os.ReadFile(filepath.Join(r.root, ".gitignore"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*.") && !strings.ContainsAny(line[1:], "*/?["):
			r.suffixes = append(r.suffixes, line[1:])
		case strings.HasSuffix(line, "/"):
			r.ignored = append(r.ignored, strings.TrimPrefix(line, "/"))
		}
	}
	return nil
}

// isIgnored reports whether a slash path (folders end in "/") is below a
// folder .gitignore lists, or has an ignored suffix.
func (r *repo) isIgnored(rel string) bool {
	for _, s := range r.suffixes {
		if strings.HasSuffix(rel, s) {
			return true
		}
	}
	for _, dir := range r.ignored {
		if strings.HasPrefix(rel, dir) {
			return true
		}
	}
	return false
}

func isText(p string) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	buf := make([]byte, 8192)
	n, _ := f.Read(buf)
	return bytes.IndexByte(buf[:n], 0) < 0, nil
}

func (r *repo) read(rel string) (string, error) {
	data, err := os.ReadFile(filepath.Join(r.root, filepath.FromSlash(rel)))
	return string(data), err
}

// check runs every check and returns the problems in file order.
func (r *repo) check() ([]problem, error) {
	var out []problem
	for _, f := range r.files {
		text, err := r.read(f)
		if err != nil {
			return nil, err
		}
		out = append(out, checkCitations(f, text)...)
		if strings.HasSuffix(f, ".md") {
			ps, err := r.checkMarkdown(f, text)
			if err != nil {
				return nil, err
			}
			out = append(out, ps...)
		} else {
			ps, err := r.checkDocLinks(f, text)
			if err != nil {
				return nil, err
			}
			out = append(out, ps...)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].File != out[j].File {
			return out[i].File < out[j].File
		}
		return out[i].Line < out[j].Line
	})
	return out, nil
}

// The section sign, written as an escape so that this file does not trip
// its own check.
const sectionSign = "\u00a7"

var (
	// rfcBefore matches text that ends in an RFC number: "RFC 3501 ".
	rfcBefore = regexp.MustCompile(`RFC ?\d+[\s,]*$`)
	// outside names documents that live beside the checkout, not in it.
	// (Written with [/] and [ ] so that this line does not match itself.)
	outside = regexp.MustCompile(`(?i)(?:\bshared[/]spec|\.\./shared\b|\bthe[ ]spec\b)`)
	// commentLead is what starts a continued comment line in the
	// repository's languages.
	commentLead = regexp.MustCompile(`^\s*(?://+|#+|\*+|/\*+|--|;+)?\s*`)
)

// checkCitations finds citations of documents outside the repository: a
// section sign that does not follow an RFC number (within the same
// comment, also across line breaks), and names of the shared folder.
func checkCitations(file, text string) []problem {
	var out []problem
	lines := strings.Split(text, "\n")
	for i, line := range lines {
		if m := outside.FindString(line); m != "" {
			out = append(out, problem{file, i + 1, fmt.Sprintf("cites %q, which is not in the repository; "+
				"put what the reader needs into docs/ and link it (e.g. docs/protocol.md#apns-410)", m)})
		}
		for off := 0; ; {
			j := strings.Index(line[off:], sectionSign)
			if j < 0 {
				break
			}
			j += off
			off = j + len(sectionSign)
			if rfcBefore.MatchString(precedingText(lines, i, j)) {
				continue
			}
			out = append(out, problem{file, i + 1, "cites a numbered section of a document that is not in the " +
				"repository; link the part of docs/protocol.md (or another doc) that says it, e.g. docs/protocol.md#apns-410"})
		}
	}
	return out
}

// precedingText is the text before column col of line i, with up to two
// earlier lines joined in front without their comment markers, so that
// "RFC 3501" at the end of one comment line covers a section sign at the
// start of the next.
func precedingText(lines []string, i, col int) string {
	parts := []string{commentLead.ReplaceAllString(lines[i][:col], "")}
	for k := i - 1; k >= 0 && k >= i-2; k-- {
		parts = append([]string{commentLead.ReplaceAllString(lines[k], "")}, parts...)
	}
	return strings.Join(parts, " ")
}

// docLink is a link into docs/ as code, configuration and scripts write it.
var docLink = regexp.MustCompile(`\bdocs/[A-Za-z0-9_.-]+\.md(?:#[A-Za-z0-9_.-]*)?`)

// checkDocLinks checks every docs/<name>.md[#anchor] in a file that is not
// Markdown.
func (r *repo) checkDocLinks(file, text string) ([]problem, error) {
	var out []problem
	for i, line := range strings.Split(text, "\n") {
		for _, m := range docLink.FindAllString(line, -1) {
			m = strings.TrimRight(m, ".")
			target, anchor, _ := strings.Cut(m, "#")
			what, err := r.checkTarget(target, anchor, strings.Contains(m, "#"))
			if err != nil {
				return nil, err
			}
			if what != "" {
				out = append(out, problem{file, i + 1, fmt.Sprintf("%s: %s", m, what)})
			}
		}
		// A comment that names a file of the repository ("see
		// internal/registry/registry.go") must name one that exists.
		if !commentLine.MatchString(line) {
			continue
		}
		for _, word := range strings.Fields(commentLead.ReplaceAllString(line, "")) {
			word = strings.TrimRight(strings.Trim(word, "\"'`()<>[]{},;:"), ".")
			if docLink.MatchString(word) {
				continue // checked above
			}
			what, err := r.checkPathWord(word, "")
			if err != nil {
				return nil, err
			}
			if what != "" {
				out = append(out, problem{file, i + 1, fmt.Sprintf("%s: %s", word, what)})
			}
		}
	}
	return out, nil
}

// checkPathWord says what is wrong with word if it names a path in the
// repository (see repoPath), or "" when it is fine or names none.
func (r *repo) checkPathWord(word, dir string) (string, error) {
	target, anchor, hasAnchor, ok := r.repoPath(word, dir)
	if !ok {
		return "", nil
	}
	return r.checkTarget(target, anchor, hasAnchor)
}

// commentLine is a line that is a comment in Go, C, shell, Python, YAML
// or a Makefile (or inside a C block comment).
var commentLine = regexp.MustCompile(`^\s*(//|#|/\*|\*)`)

// checkTarget says what is wrong with a reference to the repository path
// target (slash, relative to the root) and its anchor, or "" when
// nothing is.
func (r *repo) checkTarget(target, anchor string, hasAnchor bool) (string, error) {
	target = strings.TrimSuffix(target, "/")
	if !r.exists[target] && !r.isIgnored(target+"/") && !r.isIgnored(target) {
		return "no such file or folder in the repository", nil
	}
	if !hasAnchor {
		return "", nil
	}
	if !strings.HasSuffix(target, ".md") {
		return "", nil
	}
	if anchor == "" {
		return "empty anchor", nil
	}
	ids, err := r.anchorsOf(target)
	if err != nil {
		return "", err
	}
	if !ids[anchor] {
		return fmt.Sprintf("%s has no anchor #%s", target, anchor), nil
	}
	return "", nil
}

// anchorsOf returns the anchors of a Markdown file: explicit id= and
// name= attributes, and the ids GitHub gives its headings.
func (r *repo) anchorsOf(file string) (map[string]bool, error) {
	if ids, ok := r.anchors[file]; ok {
		return ids, nil
	}
	text, err := r.read(file)
	if err != nil {
		return nil, err
	}
	ids := markdownAnchors(text)
	r.anchors[file] = ids
	return ids, nil
}

var (
	explicitID = regexp.MustCompile(`<[A-Za-z][^>]*?\s(?:id|name)\s*=\s*"([^"]+)"`)
	atxHeading = regexp.MustCompile(`^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$`)
	mdLinkText = regexp.MustCompile(`!?\[([^\]]*)\]\([^)]*\)`)
	htmlTag    = regexp.MustCompile(`<[^>]+>`)
)

func markdownAnchors(text string) map[string]bool {
	ids := map[string]bool{}
	seen := map[string]int{}
	noFences := blankFences(text)
	// An id shown in a code span is an example, not an anchor.
	_, prose := codeSpans(noFences)
	for _, m := range explicitID.FindAllStringSubmatch(prose, -1) {
		ids[m[1]] = true
	}
	for _, line := range strings.Split(noFences, "\n") {
		m := atxHeading.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		slug := headingSlug(m[2])
		if n := seen[slug]; n > 0 {
			ids[fmt.Sprintf("%s-%d", slug, n)] = true
		} else {
			ids[slug] = true
		}
		seen[slug]++
	}
	return ids
}

// headingSlug is GitHub's id for a heading: the rendered text, lower-cased,
// with everything but letters, digits, spaces, '-' and '_' dropped and
// spaces turned into '-'.
func headingSlug(heading string) string {
	s := mdLinkText.ReplaceAllString(heading, "$1")
	s = htmlTag.ReplaceAllString(s, "")
	s = strings.NewReplacer("`", "", "*", "").Replace(s)
	var b strings.Builder
	for _, c := range strings.ToLower(s) {
		switch {
		case unicode.IsLetter(c) || unicode.IsDigit(c) || c == '-' || c == '_':
			b.WriteRune(c)
		case c == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// blankFences replaces the lines of fenced code blocks, fences included,
// by spaces, keeping every offset and line number.
func blankFences(text string) string {
	lines := strings.Split(text, "\n")
	fence := ""
	for i, line := range lines {
		t := strings.TrimLeft(line, " ")
		if fence == "" {
			if strings.HasPrefix(t, "```") || strings.HasPrefix(t, "~~~") {
				fence = strings.Repeat(t[:1], 3)
				lines[i] = strings.Repeat(" ", len(line))
			}
			continue
		}
		if strings.HasPrefix(t, fence) {
			fence = ""
		}
		lines[i] = strings.Repeat(" ", len(line))
	}
	return strings.Join(lines, "\n")
}

// codeSpan is one `…` of a Markdown file.
type codeSpan struct {
	text       string
	line       int
	start, end int // offsets of the span, backticks included
}

// codeSpans finds the inline code spans of prose (fences already blank)
// and returns the prose with each span blanked, so links are not looked
// for inside them. A span may wrap onto the next line.
func codeSpans(prose string) ([]codeSpan, string) {
	var spans []codeSpan
	b := []byte(prose)
	for i := 0; i < len(b); {
		if b[i] != '`' {
			i++
			continue
		}
		n := 0
		for i+n < len(b) && b[i+n] == '`' {
			n++
		}
		open := strings.Repeat("`", n)
		end := -1
		for j := i + n; j < len(b); {
			k := bytes.Index(b[j:], []byte(open))
			if k < 0 {
				break
			}
			k += j
			m := 0
			for k+m < len(b) && b[k+m] == '`' {
				m++
			}
			if m == n {
				end = k
				break
			}
			j = k + m
		}
		if end < 0 {
			i += n
			continue
		}
		content := strings.TrimSpace(strings.ReplaceAll(string(b[i+n:end]), "\n", " "))
		spans = append(spans, codeSpan{content, 1 + bytes.Count(b[:i], []byte("\n")), i, end + n})
		for k := i; k < end+n; k++ {
			if b[k] != '\n' {
				b[k] = ' '
			}
		}
		i = end + n
	}
	return spans, string(b)
}

var (
	inlineLink = regexp.MustCompile(`\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)
	refLink    = regexp.MustCompile(`(?m)^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)`)
	hrefLink   = regexp.MustCompile(`\bhref\s*=\s*"([^"]+)"`)
	urlScheme  = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)
	// placeholder marks a span that shows a pattern, not a path.
	placeholder = regexp.MustCompile(`[<>*?{}$%\[\]]|…|\.\.\.`)
)

// checkMarkdown checks a Markdown file's relative links and the
// repository paths it names in backticks.
func (r *repo) checkMarkdown(file, text string) ([]problem, error) {
	dir := path.Dir(file)
	if dir == "." {
		dir = ""
	}
	spans, prose := codeSpans(blankFences(text))
	// What is left once spans and link targets are blanked: a
	// docs/<name>.md there, in prose or in a code block (a sample
	// configuration's comment), is checked as in code.
	rest := []byte(text)
	blank := func(from, to int) {
		for k := from; k < to; k++ {
			if rest[k] != '\n' {
				rest[k] = ' '
			}
		}
	}
	for _, s := range spans {
		blank(s.start, s.end)
	}

	type link struct {
		target string
		line   int
	}
	var links []link
	for _, re := range []*regexp.Regexp{inlineLink, refLink, hrefLink} {
		for _, m := range re.FindAllStringSubmatchIndex(prose, -1) {
			links = append(links, link{prose[m[2]:m[3]], 1 + strings.Count(prose[:m[0]], "\n")})
			blank(m[2], m[3])
		}
	}
	out, err := r.checkDocLinks(file, string(rest))
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if urlScheme.MatchString(l.target) {
			continue
		}
		raw, anchor, hasAnchor := strings.Cut(l.target, "#")
		p, err := url.PathUnescape(raw)
		if err != nil {
			out = append(out, problem{file, l.line, fmt.Sprintf("link %s: %v", l.target, err)})
			continue
		}
		var target string
		switch {
		case p == "":
			target = file
		case strings.HasPrefix(p, "/"):
			target = path.Clean(strings.TrimPrefix(p, "/"))
		default:
			target = path.Clean(path.Join(dir, p))
		}
		if target == ".." || strings.HasPrefix(target, "../") {
			out = append(out, problem{file, l.line, fmt.Sprintf("link %s points outside the repository", l.target)})
			continue
		}
		if target == "." {
			target = ""
		}
		what, err := r.checkTarget(target, anchor, hasAnchor)
		if err != nil {
			return nil, err
		}
		if what != "" {
			out = append(out, problem{file, l.line, fmt.Sprintf("link %s: %s", l.target, what)})
		}
	}

	for _, s := range spans {
		for _, word := range strings.Fields(s.text) {
			what, err := r.checkPathWord(word, dir)
			if err != nil {
				return nil, err
			}
			if what != "" {
				out = append(out, problem{file, s.line, fmt.Sprintf("`%s`: %s", word, what)})
			}
		}
	}
	return out, nil
}

// repoPath decides whether a word of a code span names a path in the
// repository, and returns it relative to the root. A path is taken
// relative to the Markdown file's folder when its first element is a
// folder there and the path exists there (dovecot/README.md names
// dovecot/test/smoke.sh by its path below dovecot/), else relative to the root
// when its first element is a top-level folder.
func (r *repo) repoPath(word, dir string) (target, anchor string, hasAnchor, ok bool) {
	w := strings.TrimRight(word, ".,:;)")
	w = strings.TrimPrefix(w, "./")
	if !strings.Contains(w, "/") || strings.HasPrefix(w, "/") || strings.HasPrefix(w, "../") ||
		urlScheme.MatchString(w) || placeholder.MatchString(w) || strings.Contains(w, "=") {
		return "", "", false, false
	}
	w, anchor, hasAnchor = strings.Cut(w, "#")
	first, _, _ := strings.Cut(w, "/")
	local := path.Clean(path.Join(dir, w))
	localDir := dir != "" && r.exists[path.Join(dir, first)]
	switch {
	case localDir && r.exists[strings.TrimSuffix(local, "/")]:
		return local, anchor, hasAnchor, true
	case r.topDirs[first]:
		return path.Clean(w), anchor, hasAnchor, true
	case localDir:
		return local, anchor, hasAnchor, true
	}
	return "", "", false, false
}
