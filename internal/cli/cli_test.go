package cli

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestNormalizeArgsKeepsOldSingleDashFlags(t *testing.T) {
	in := []string{"-pass", "-configPath", "/etc/x", "-configName=mail", "-p", "--config", "f", "-version"}
	want := []string{"--pass", "--configPath", "/etc/x", "--configName=mail", "-p", "--config", "f", "-version"}
	if got := normalizeArgs(in); !slices.Equal(got, want) {
		t.Errorf("normalizeArgs = %v, want %v", got, want)
	}
}

func runMain(stdin string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Main(args, Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Version: "1.2.3"})
	return code, out.String(), errb.String()
}

func TestPassHashesOneLine(t *testing.T) {
	// sha256("secret")
	const want = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\n"
	for _, in := range []string{"secret\n", "secret\r\n", "secret", "secret\nignored\n"} {
		code, out, _ := runMain(in, "-pass")
		if code != 0 || out != want {
			t.Errorf("-pass with %q: %d %q", in, code, out)
		}
	}
	if code, _, errOut := runMain("\n", "-pass"); code == 0 || !strings.Contains(errOut, "empty") {
		t.Errorf("empty password: %d %q", code, errOut)
	}
}

func TestFlagErrors(t *testing.T) {
	if code, out, _ := runMain("", "--version"); code != 0 || out != "xapsd 1.2.3\n" {
		t.Errorf("--version: %d %q", code, out)
	}
	if code, _, errOut := runMain("", "--no-such-flag"); code != 2 || !strings.Contains(errOut, "no-such-flag") {
		t.Errorf("unknown flag: %d %q", code, errOut)
	}
	if code, _, errOut := runMain("", "serve"); code != 2 || !strings.Contains(errOut, "serve") {
		t.Errorf("stray argument: %d %q", code, errOut)
	}
	if code, _, errOut := runMain("", "--config", "/nonexistent/xapsd.yaml"); code != 1 || !strings.Contains(errOut, "/nonexistent/xapsd.yaml") {
		t.Errorf("missing config: %d %q", code, errOut)
	}
	if code, _, errOut := runMain("", "-configPath", "/nonexistent", "-configName", "nope"); code != 1 || !strings.Contains(errOut, "/nonexistent/nope.yaml") {
		t.Errorf("config search: %d %q", code, errOut)
	}
}
