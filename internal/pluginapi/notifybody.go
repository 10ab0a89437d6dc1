package pluginapi

import "github.com/xapsd/xapsd/internal/plainjson"

// decodeNotifyBody reads the /notify body the plugin sends,
// {"Username":"…","Mailbox":"…","Events":["…",…]} with its keys as the
// plugin spells them, each once, and strings without escapes, into req,
// and reports whether it could. Anything else (another spelling of a key,
// an unknown key, an escape, null, a number, trailing data) is left to
// encoding/json, so what is accepted and stored stays what encoding/json
// makes of the body; a fuzz target (FuzzDecodeMatchesDecoder) holds the
// two to the same answers. encoding/json's reflection was about 4 % of the
// daemon's CPU per push. b must be valid UTF-8 (decode checks it first).
func decodeNotifyBody(b []byte, req *notifyRequest) bool {
	s := plainjson.NewScanner(b)
	var r notifyRequest
	if !s.Next('{') {
		return false
	}
	for {
		key, ok := s.Bytes()
		if !ok || !s.Next(':') {
			return false
		}
		switch string(key) {
		case "Username":
			if !stringOnce(&s, &r.Username) {
				return false
			}
		case "Mailbox":
			if !stringOnce(&s, &r.Mailbox) {
				return false
			}
		case "Events":
			if r.Events != nil {
				return false
			}
			if r.Events, ok = s.Strings(); !ok {
				return false
			}
		default:
			return false
		}
		if s.Next(',') {
			continue
		}
		if !s.Next('}') || !s.End() {
			return false
		}
		*req = r
		return true
	}
}

// stringOnce reads a string into *v, which no earlier key has set.
func stringOnce(s *plainjson.Scanner, v **string) bool {
	if *v != nil {
		return false
	}
	str, ok := s.String()
	if ok {
		*v = &str
	}
	return ok
}
