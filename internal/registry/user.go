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
