package registry

// FoldUser is the one spelling of a user name that registrations are
// filed under: ASCII letters lower-cased, every other byte kept. Dovecot
// lower-cases user names this way (%Lu, str_lcase), so Unicode case
// folding here would merge users Dovecot keeps apart: strings.ToLower
// files a Kelvin sign (U+212A) under "k".
func FoldUser(s string) string {
	i := 0
	for i < len(s) && (s[i] < 'A' || s[i] > 'Z') {
		i++
	}
	if i == len(s) {
		return s // the usual case: already folded, no allocation
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if c := b[i]; c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// FoldToken is the one spelling of a device token that registrations are
// filed under: ASCII letters upper-cased, the way iOS sends its hex
// tokens. APNs takes either case, so "abc…" and "ABC…" are one device;
// kept apart, it would get every push twice.
func FoldToken(s string) string {
	i := 0
	for i < len(s) && (s[i] < 'a' || s[i] > 'z') {
		i++
	}
	if i == len(s) {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if c := b[i]; c >= 'a' && c <= 'z' {
			b[i] = c - ('a' - 'A')
		}
	}
	return string(b)
}
