package filestore

import (
	"bytes"
	"encoding/json"
)

// parseRecordLine decodes one snapshot line. Lines written by
// encodeSnapshot are flat objects of plain strings, which this reads
// without reflection; anything else (escapes, other spacing, unknown
// keys, other types) goes through encoding/json, so the result is always
// what json.Unmarshal would give. Loading a million registrations is
// dominated by this function.
func parseRecordLine(line []byte) (record, error) {
	if r, ok := parseFlat(line); ok {
		return r, nil
	}
	var r record
	err := json.Unmarshal(line, &r)
	return r, err
}

func parseFlat(s []byte) (record, bool) {
	var r record
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return r, false
	}
	p := 1
	seen := 0
	for {
		key, np, ok := plainString(s, p)
		if !ok || np >= len(s) || s[np] != ':' {
			return r, false
		}
		p = np + 1
		var bit int
		var str *string // the field a plain string value goes to
		switch string(key) {
		case "User":
			bit, str = 1, &r.User
		case "AccountId":
			bit, str = 2, &r.AccountID
		case "DeviceToken":
			bit, str = 4, &r.DeviceToken
		case "Mailboxes":
			bit = 8
			r.Mailboxes, p, ok = plainStringList(s, p)
		case "RegistrationTime":
			bit = 16
			var v []byte
			if v, p, ok = plainString(s, p); ok {
				// time.Time's own JSON rule: exactly RFC 3339.
				ok = r.RegistrationTime.UnmarshalText(v) == nil
			}
		default:
			return r, false
		}
		if str != nil {
			var v []byte
			if v, p, ok = plainString(s, p); ok {
				*str = string(v)
			}
		}
		if !ok || seen&bit != 0 {
			// Duplicate keys: let encoding/json decide what wins.
			return r, false
		}
		seen |= bit
		switch {
		case p < len(s)-1 && s[p] == ',':
			p++
		case p == len(s)-1:
			return r, true
		default:
			return r, false
		}
	}
}

// plainString reads a JSON string without escapes or control characters
// starting at s[p] == '"' and returns its content and the index after it.
func plainString(s []byte, p int) ([]byte, int, bool) {
	if p >= len(s) || s[p] != '"' {
		return nil, p, false
	}
	end := bytes.IndexByte(s[p+1:], '"')
	if end < 0 {
		return nil, p, false
	}
	v := s[p+1 : p+1+end]
	for _, c := range v {
		if c < 0x20 || c == '\\' || c >= 0x80 {
			// Escapes and non-ASCII (invalid UTF-8 is replaced by
			// encoding/json) take the slow path.
			return nil, p, false
		}
	}
	return v, p + end + 2, true
}

func plainStringList(s []byte, p int) ([]string, int, bool) {
	if p >= len(s) || s[p] != '[' {
		return nil, p, false
	}
	p++
	var out []string
	if p < len(s) && s[p] == ']' {
		return []string{}, p + 1, true
	}
	for {
		v, np, ok := plainString(s, p)
		if !ok || np >= len(s) {
			return nil, p, false
		}
		out = append(out, string(v))
		p = np
		switch s[p] {
		case ',':
			p++
		case ']':
			return out, p + 1, true
		default:
			return nil, p, false
		}
	}
}
