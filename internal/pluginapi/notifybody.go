package pluginapi

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
	s := jsonScanner{b: b}
	var r notifyRequest
	if !s.next('{') {
		return false
	}
	for {
		key, ok := s.str()
		if !ok || !s.next(':') {
			return false
		}
		switch key {
		case "Username":
			if !s.strOnce(&r.Username) {
				return false
			}
		case "Mailbox":
			if !s.strOnce(&r.Mailbox) {
				return false
			}
		case "Events":
			if r.Events != nil || !s.strings(&r.Events) {
				return false
			}
		default:
			return false
		}
		if s.next(',') {
			continue
		}
		if !s.next('}') {
			return false
		}
		s.space()
		if s.i != len(s.b) {
			return false
		}
		*req = r
		return true
	}
}

// jsonScanner reads the few JSON forms decodeNotifyBody accepts.
type jsonScanner struct {
	b []byte
	i int
}

// space skips JSON white space.
func (s *jsonScanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// next consumes c after white space, if it is there.
func (s *jsonScanner) next(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// str reads a string without escapes (or control characters, which JSON
// forbids in strings) after white space.
func (s *jsonScanner) str() (string, bool) {
	if !s.next('"') {
		return "", false
	}
	start := s.i
	for ; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; {
		case c == '"':
			v := string(s.b[start:s.i])
			s.i++
			return v, true
		case c == '\\' || c < 0x20:
			return "", false
		}
	}
	return "", false
}

// strOnce reads a string into *v, which no earlier key has set.
func (s *jsonScanner) strOnce(v **string) bool {
	if *v != nil {
		return false
	}
	str, ok := s.str()
	if ok {
		*v = &str
	}
	return ok
}

// strings reads an array of such strings into *v (an empty array is an
// empty slice, not nil, as encoding/json makes it).
func (s *jsonScanner) strings(v *[]string) bool {
	if !s.next('[') {
		return false
	}
	list := make([]string, 0, 4)
	if s.next(']') {
		*v = list
		return true
	}
	for {
		e, ok := s.str()
		if !ok {
			return false
		}
		list = append(list, e)
		if s.next(']') {
			*v = list
			return true
		}
		if !s.next(',') {
			return false
		}
	}
}
