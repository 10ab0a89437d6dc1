package registry

import "testing"

func TestMailboxNamesAreDecodedFromModifiedUTF7AndMalformedOnesKept(t *testing.T) {
	for in, want := range map[string]string{
		"&AMQ-rger":        "Ärger",
		"Sent &- Received": "Sent & Received",
		"&ZeVnLIqe-":       "日本語",
		"Plain":            "Plain",
		"&AOQ":             "&AOQ", // unterminated: kept
		"&[[[-":            "&[[[-",
		"iNbOx":            "INBOX",
		"INBOX/&AOQ-":      "INBOX/ä",
	} {
		if got := normalizeMailbox(in); got != want {
			t.Errorf("normalizeMailbox(%q) = %q, want %q", in, got, want)
		}
	}
}
