package filestore

import (
	"encoding/json"
	"unicode/utf8"

	"github.com/xapsd/xapsd/internal/plainjson"
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

// parseFlat reads a line in the plain form (see plainjson), and reports
// whether it could.
func parseFlat(line []byte) (record, bool) {
	var r record
	if !utf8.Valid(line) {
		return r, false // encoding/json replaces invalid bytes
	}
	s := plainjson.NewScanner(line)
	if !s.Next('{') {
		return r, false
	}
	seen := 0
	for {
		key, ok := s.Bytes()
		if !ok || !s.Next(':') {
			return r, false
		}
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
			r.Mailboxes, ok = s.Strings()
		case "RegistrationTime":
			bit = 16
			var v []byte
			if v, ok = s.Bytes(); ok {
				// time.Time's own JSON rule: exactly RFC 3339.
				ok = r.RegistrationTime.UnmarshalText(v) == nil
			}
		default:
			return r, false
		}
		if str != nil {
			*str, ok = s.String()
		}
		if !ok || seen&bit != 0 {
			// Duplicate keys: let encoding/json decide what wins.
			return r, false
		}
		seen |= bit
		if s.Next(',') {
			continue
		}
		return r, s.Next('}') && s.End()
	}
}
