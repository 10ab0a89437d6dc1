package apns

import (
	"encoding/json"
	"testing"
)

// FuzzPayload: whatever the account id, the payload is the one made with
// encoding/json, and valid JSON.
func FuzzPayload(f *testing.F) {
	for _, s := range []string{"", "0A1B2C3D-4E5F-6789-ABCD-EF0123456789", "acc-1", `q"b\s`, "<a>&", "ü…", "\u2028\u2029", "\x00\x1f\x7f", "\xff", "a b/c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, accountID string) {
		id, err := json.Marshal(accountID)
		if err != nil {
			t.Fatal(err)
		}
		want := `{"aps":{"account-id":` + string(id) + "}}"
		got := Payload(accountID)
		if string(got) != want {
			t.Fatalf("Payload(%q) = %s, encoding/json makes %s", accountID, got, want)
		}
		if !json.Valid(got) {
			t.Fatalf("Payload(%q) = %s: not JSON", accountID, got)
		}
	})
}
