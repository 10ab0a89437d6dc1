package suggest

import "testing"

func TestClosestSuggestsAKnownWordForAMisspeltOne(t *testing.T) {
	keys := []string{"listenAddr", "tlsListenAddr", "metricsListenAddr", "loglevel", "logFormat", "port", "tlsPort", "delay"}
	endpoints := []string{"production", "development", "dry-run"}
	commands := []string{"devices", "test-push", "import", "help"}
	for _, tc := range []struct {
		word    string
		choices []string
		want    string
	}{
		{"listenadr", keys, "listenAddr"},
		{"ListenAddress", keys, "listenAddr"},
		{"listenAdress", keys, "listenAddr"}, // four edits, but from a word of twelve letters
		{"metricsListenAdress", keys, "metricsListenAddr"},
		{"logLevel", keys, "loglevel"},
		{"lgolevel", keys, "loglevel"}, // a transposition is one edit
		{"prot", keys, "port"},
		{"feedbackInterval", keys, ""},
		{"prod", endpoints, "production"},
		{"dev", endpoints, "development"},
		{"dryrun", endpoints, "dry-run"},
		{"sandbox", endpoints, ""},
		{"device", commands, "devices"},
		{"testpush", commands, "test-push"},
		{"", commands, ""},
		{"x", commands, ""},
		{"de", []string{"delay", "development"}, ""},      // too short to be a prefix
		{"tls", []string{"tlsPort", "tlsListenAddr"}, ""}, // two prefixes, neither close
	} {
		if got := Closest(tc.word, tc.choices); got != tc.want {
			t.Errorf("Closest(%q) = %q, want %q", tc.word, got, tc.want)
		}
	}
}

func TestDistanceCountsEditsWithTranspositions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"a", "", 1}, {"", "abc", 3}, {"kitten", "sitting", 3}, {"ab", "ba", 1}, {"port", "prot", 1}, {"abc", "abc", 0},
	} {
		if got := distance(tc.a, tc.b); got != tc.want {
			t.Errorf("distance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
