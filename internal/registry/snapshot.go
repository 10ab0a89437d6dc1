package registry

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"sync"
	"time"
)

// The snapshot is one JSON document, written one registration per line so
// that a million-entry file can be read line by line on several cores:
//
//	{"Version":2,"Seq":42,"Registrations":[
//	{"User":"alice@example.com","AccountId":"…","DeviceToken":"…","Mailboxes":["INBOX"],"RegistrationTime":"…"},
//	…
//	]}
//
// Seq is the last journal sequence number the snapshot contains; replay
// skips journal records up to it. Any other valid JSON with the same
// fields (hand-edited, pretty-printed) still loads through the slow path,
// and so does the old daemon's layout (spec §4.1), which is migrated.
const snapshotVersion = 2

var snapshotHeaderPrefix = []byte(`{"Version":2,"Seq":`)

// snapshot is the decoded content of the database file.
type snapshot struct {
	Seq     uint64
	Records []record
	// Legacy is true for the old daemon's layout, which is migrated.
	Legacy bool
	// AppleCerts is the old daemon's certificate store, kept for import.
	AppleCerts json.RawMessage
}

// fileFormat accepts both our layout and the old daemon's.
type fileFormat struct {
	Version       int                   `json:"Version"`
	Seq           uint64                `json:"Seq"`
	Registrations []record              `json:"Registrations"`
	Users         map[string]legacyUser `json:"Users"`
	AppleCerts    json.RawMessage       `json:"AppleCerts"`
}

type legacyUser struct {
	Accounts map[string]legacyAccount `json:"Accounts"`
}

type legacyAccount struct {
	DeviceToken      string    `json:"DeviceToken"`
	Mailboxes        []string  `json:"Mailboxes"`
	RegistrationTime time.Time `json:"RegistrationTime"`
}

// decodeSnapshot parses a database file. An empty file is an empty
// registry (the old daemon treated it so).
func decodeSnapshot(data []byte) (*snapshot, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return &snapshot{}, nil
	}
	if s, ok := decodeFast(data); ok {
		return s, nil
	}
	return decodeSlow(data)
}

// decodeSlow is plain encoding/json over the whole document.
func decodeSlow(data []byte) (*snapshot, error) {
	var f fileFormat
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("parse JSON: %w", err)
	}
	if f.Version > snapshotVersion {
		return nil, fmt.Errorf("format version %d is newer than this xapsd understands (%d)", f.Version, snapshotVersion)
	}
	s := &snapshot{Seq: f.Seq, Records: f.Registrations, AppleCerts: f.AppleCerts}
	if f.Version == 0 && (f.Users != nil || f.AppleCerts != nil) {
		s.Legacy = true
		for user, u := range f.Users {
			for account, a := range u.Accounts {
				s.Records = append(s.Records, record{User: user, AccountID: account, DeviceToken: a.DeviceToken,
					Mailboxes: a.Mailboxes, RegistrationTime: a.RegistrationTime})
			}
		}
	}
	return s, nil
}

// decodeFast reads the layout encodeSnapshot writes, decoding lines in
// parallel. It reports false for anything else, and the caller falls back
// to decodeSlow, so it only has to be right for files it accepts.
func decodeFast(data []byte) (*snapshot, bool) {
	if !bytes.HasPrefix(data, snapshotHeaderPrefix) {
		return nil, false
	}
	nl := bytes.IndexByte(data, '\n')
	if nl < 0 {
		return nil, false
	}
	head := data[len(snapshotHeaderPrefix):nl]
	head, ok := bytes.CutSuffix(head, []byte(`,"Registrations":[`))
	if !ok {
		return nil, false
	}
	seq, err := strconv.ParseUint(string(head), 10, 64)
	if err != nil {
		return nil, false
	}
	body := data[nl+1:]
	body = bytes.TrimRight(body, "\n")
	body, ok = bytes.CutSuffix(body, []byte("]}"))
	if !ok {
		return nil, false
	}
	lines := bytes.Split(body, []byte("\n"))
	if len(lines) > 0 && len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	for i, l := range lines {
		// Every line but the last ends with the array's comma.
		want := i < len(lines)-1
		l, had := bytes.CutSuffix(l, []byte(","))
		if had != want {
			return nil, false
		}
		lines[i] = l
	}
	recs := make([]record, len(lines))
	workers := runtime.GOMAXPROCS(0)
	chunk := (len(lines) + workers - 1) / workers
	var wg sync.WaitGroup
	var failed sync.Once
	bad := false
	for start := 0; start < len(lines); start += chunk {
		end := min(start+chunk, len(lines))
		wg.Add(1)
		go func(start, end int) {
			defer wg.Done()
			for i := start; i < end; i++ {
				l := lines[i]
				if len(l) == 0 || l[0] != '{' || l[len(l)-1] != '}' {
					failed.Do(func() { bad = true })
					return
				}
				r, err := parseRecordLine(l)
				if err != nil || r.Seq != 0 || r.Op != "" {
					failed.Do(func() { bad = true })
					return
				}
				recs[i] = r
			}
		}(start, end)
	}
	wg.Wait()
	if bad {
		return nil, false
	}
	return &snapshot{Seq: seq, Records: recs}, true
}

// snapshotWriter streams a snapshot without building it in memory.
type snapshotWriter struct {
	w     *bufio.Writer
	n     int
	err   error
	lines []byte
}

func newSnapshotWriter(w io.Writer, seq uint64) *snapshotWriter {
	sw := &snapshotWriter{w: bufio.NewWriterSize(w, 1<<20)}
	fmt.Fprintf(sw.w, `{"Version":%d,"Seq":%d,"Registrations":[`+"\n", snapshotVersion, seq)
	return sw
}

func (sw *snapshotWriter) add(r record) {
	if sw.err != nil {
		return
	}
	if sw.n > 0 {
		sw.w.WriteString(",\n")
	}
	sw.n++
	b, err := json.Marshal(r)
	if err != nil {
		sw.err = err
		return
	}
	_, sw.err = sw.w.Write(b)
}

func (sw *snapshotWriter) finish() error {
	if sw.err != nil {
		return sw.err
	}
	if sw.n > 0 {
		sw.w.WriteString("\n")
	}
	sw.w.WriteString("]}\n")
	return sw.w.Flush()
}

// errBadLine marks a journal line that does not parse.
var errBadLine = errors.New("unparsable journal line")

func decodeJournalLine(line []byte) (record, error) {
	var r record
	if err := json.Unmarshal(line, &r); err != nil {
		return r, fmt.Errorf("%w: %v", errBadLine, err)
	}
	if r.Seq == 0 || (r.Op != opPut && r.Op != opDel) || r.User == "" || r.AccountID == "" || r.DeviceToken == "" {
		return r, fmt.Errorf("%w: missing sequence, operation or key", errBadLine)
	}
	return r, nil
}
