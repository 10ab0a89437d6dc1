package registry

import (
	"encoding/base64"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// mutf7Encoding is RFC 3501 §5.1.3's variant of base64: ',' replaces '/'
// and there is no padding.
var mutf7Encoding = base64.NewEncoding("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,").WithPadding(base64.NoPadding)

// normalizeMailbox turns a mailbox name as iOS registers it (IMAP-encoded,
// modified UTF-7) into the UTF-8 name Dovecot sends in /notify, so that
// non-ASCII folders match. INBOX is case-insensitive in IMAP (RFC 3501
// §5.1), so any spelling of it becomes "INBOX". A name that is not valid
// modified UTF-7 is kept as it is: it can then only match itself.
func normalizeMailbox(name string) string {
	if strings.EqualFold(name, "INBOX") {
		return "INBOX"
	}
	if !strings.Contains(name, "&") {
		return name
	}
	decoded, ok := decodeMUTF7(name)
	if !ok {
		return name
	}
	return decoded
}

// normalizeNotifyMailbox is the /notify side: only INBOX needs folding.
func normalizeNotifyMailbox(name string) string {
	if strings.EqualFold(name, "INBOX") {
		return "INBOX"
	}
	return name
}

func decodeMUTF7(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x80 {
			return "", false
		}
		if c != '&' {
			b.WriteByte(c)
			i++
			continue
		}
		end := strings.IndexByte(s[i+1:], '-')
		if end < 0 {
			return "", false
		}
		chunk := s[i+1 : i+1+end]
		i += end + 2
		if chunk == "" {
			b.WriteByte('&')
			continue
		}
		raw, err := mutf7Encoding.DecodeString(chunk)
		if err != nil || len(raw)%2 != 0 {
			return "", false
		}
		units := make([]uint16, len(raw)/2)
		for j := range units {
			units[j] = uint16(raw[2*j])<<8 | uint16(raw[2*j+1])
		}
		for _, r := range utf16.Decode(units) {
			if r == utf8.RuneError {
				return "", false
			}
			b.WriteRune(r)
		}
	}
	return b.String(), true
}
