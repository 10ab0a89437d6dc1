package filestore

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

	"github.com/xapsd/xapsd/internal/registry"
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
// and so does the old daemon's layout (docs/protocol.md#legacy-database), which is migrated.
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
	// Empty is true for a file that holds no registry at all: 0 bytes,
	// null or {}.
	Empty bool
	// BadEntries counts entries of the old daemon's layout that were
	// skipped because they do not have the right types.
	BadEntries int
	// salvaged is set when the file did not parse and was read line by
	// line; decodeErr says why it did not parse.
	salvaged  *salvage
	decodeErr error
}

// fileFormat accepts both our layout and the old daemon's.
type fileFormat struct {
	Version       *int                       `json:"Version"`
	Seq           uint64                     `json:"Seq"`
	Registrations []record                   `json:"Registrations"`
	Users         map[string]json.RawMessage `json:"Users"`
	AppleCerts    json.RawMessage            `json:"AppleCerts"`
}

// The old daemon's entries are decoded one by one, so that one entry of
// the wrong type costs that entry, not the migration.
type legacyUser struct {
	Accounts map[string]json.RawMessage `json:"Accounts"`
}

type legacyAccount struct {
	DeviceToken      string    `json:"DeviceToken"`
	Mailboxes        []string  `json:"Mailboxes"`
	RegistrationTime time.Time `json:"RegistrationTime"`
}

// errNewerFormat is a file written by a newer xapsd: not damage, and not
// to be salvaged and overwritten.
var errNewerFormat = errors.New("format version is newer than this xapsd understands")

// decodeSnapshot parses a database file. An empty file is an empty
// registry (the old daemon treated it so).
func decodeSnapshot(data []byte) (*snapshot, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return &snapshot{Empty: true}, nil
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
	version := 0
	if f.Version != nil {
		version = *f.Version
	}
	if version > snapshotVersion {
		return nil, fmt.Errorf("%w: version %d, this xapsd reads up to %d", errNewerFormat, version, snapshotVersion)
	}
	s := &snapshot{Seq: f.Seq, Records: f.Registrations, AppleCerts: f.AppleCerts,
		Empty: f.Version == nil && f.Registrations == nil && f.Users == nil && f.AppleCerts == nil}
	if version == 0 && (f.Users != nil || f.AppleCerts != nil) {
		s.Legacy = true
		for user, raw := range f.Users {
			var u legacyUser
			if err := json.Unmarshal(raw, &u); err != nil {
				s.BadEntries++
				continue
			}
			for account, raw := range u.Accounts {
				var a legacyAccount
				if err := json.Unmarshal(raw, &a); err != nil {
					s.BadEntries++
					continue
				}
				s.Records = append(s.Records, record{User: user, AccountID: account, DeviceToken: a.DeviceToken,
					Mailboxes: a.Mailboxes, RegistrationTime: a.RegistrationTime})
			}
		}
	}
	return s, nil
}

// salvage is what salvageSnapshot could read of a damaged file.
type salvage struct {
	seq      uint64 // from the header line; 0 if it was damaged too
	kept     int
	badLines []int // 1-based, the first few
	bad      int
	noEnd    bool // the closing "]}" is missing: the file was cut short
}

// salvageSnapshot reads a snapshot that does not parse as a whole, line by
// line: every line that is a whole registration (our layout has one a
// line) goes to apply, and the others are counted. It never fails; the
// registry is soft state that iOS renews, and refusing to start over one
// bad byte would stop push for everyone.
func salvageSnapshot(data []byte, apply func(record)) salvage {
	var s salvage
	s.noEnd = true
	for i, line := range bytes.Split(data, []byte("\n")) {
		t := bytes.TrimSuffix(bytes.TrimSpace(line), []byte(","))
		if len(t) == 0 {
			continue
		}
		if bytes.Equal(t, []byte("]}")) {
			s.noEnd = false
			continue
		}
		if head, ok := bytes.CutPrefix(t, snapshotHeaderPrefix); ok && i == 0 {
			if head, ok = bytes.CutSuffix(head, []byte(`,"Registrations":[`)); ok {
				if seq, err := strconv.ParseUint(string(head), 10, 64); err == nil {
					s.seq = seq
					continue
				}
			}
		}
		r, err := parseRecordLine(t)
		if err != nil || r.Seq != 0 || r.Op != "" || r.User == "" || r.AccountID == "" || r.DeviceToken == "" {
			s.bad++
			if len(s.badLines) < 10 {
				s.badLines = append(s.badLines, i+1)
			}
			continue
		}
		s.kept++
		apply(r)
	}
	return s
}

// decodeFast reads the layout encodeSnapshot writes from memory. It
// reports false for anything else, and the caller falls back to
// decodeSlow, so it only has to be right for files it accepts.
func decodeFast(data []byte) (*snapshot, bool) {
	s := &snapshot{}
	seq, ok, err := streamSnapshot(bytes.NewReader(data), func(r record) { s.Records = append(s.Records, r) })
	if err != nil || !ok {
		return nil, false
	}
	s.Seq = seq
	return s, true
}

// linesPerChunk is how many snapshot lines one decoder takes at a time:
// big enough to amortise the hand-offs, small enough that the chunks in
// flight stay a few megabytes.
const linesPerChunk = 4096

type chunk struct {
	n     int
	lines [][]byte
	recs  []record
	bad   bool
	done  chan struct{}
}

// streamSnapshot reads the layout encodeSnapshot writes and calls apply
// for each registration in file order. Lines are decoded on every core
// while apply runs, and the file is never held in memory whole: loading a
// million registrations is a matter of seconds and of the registry's own
// size. ok is false when the input is not exactly that layout; apply may
// then have seen some records already, and the caller starts over with
// decodeSlow.
func streamSnapshot(in io.Reader, apply func(record)) (seq uint64, ok bool, err error) {
	br := bufio.NewReaderSize(in, 1<<20)
	head, err := br.ReadBytes('\n')
	if err != nil {
		return 0, false, nil
	}
	head = bytes.TrimSuffix(head, []byte("\n"))
	head, found := bytes.CutPrefix(head, snapshotHeaderPrefix)
	if !found {
		return 0, false, nil
	}
	head, found = bytes.CutSuffix(head, []byte(`,"Registrations":[`))
	if !found {
		return 0, false, nil
	}
	if seq, err = strconv.ParseUint(string(head), 10, 64); err != nil {
		return 0, false, nil
	}

	workers := runtime.GOMAXPROCS(0)
	todo := make(chan *chunk, workers*2)
	ordered := make(chan *chunk, workers*2)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range todo {
				c.recs = make([]record, 0, len(c.lines))
				for _, l := range c.lines {
					r, err := parseRecordLine(l)
					if err != nil || r.Seq != 0 || r.Op != "" {
						c.bad = true
						break
					}
					c.recs = append(c.recs, r)
				}
				close(c.done)
			}
		}()
	}
	// The reader hands chunks to the decoders and, in the same order, to
	// the applier below, which waits for each to be decoded.
	readOK := make(chan bool, 1)
	stop := make(chan struct{})
	go func() {
		defer close(ordered)
		defer close(todo)
		readOK <- readChunks(br, todo, ordered, stop)
	}()
	ok = true
	for c := range ordered {
		<-c.done
		if c.bad {
			ok = false
		}
		if !ok {
			continue
		}
		for _, r := range c.recs {
			apply(r)
		}
	}
	close(stop)
	wg.Wait()
	return seq, ok && <-readOK, nil
}

// readChunks splits the registration lines into chunks and checks the
// array's punctuation: a comma after every line but the last, then "]}".
func readChunks(br *bufio.Reader, todo, ordered chan<- *chunk, stop <-chan struct{}) bool {
	c := &chunk{done: make(chan struct{})}
	send := func() bool {
		select {
		case todo <- c:
		case <-stop:
			return false
		}
		select {
		case ordered <- c:
		case <-stop:
			return false
		}
		c = &chunk{done: make(chan struct{})}
		return true
	}
	prevComma := true // the header line opens the array
	for n := 0; ; n++ {
		line, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return false
		}
		eof := err != nil
		line = bytes.TrimSuffix(line, []byte("\n"))
		if bytes.Equal(line, []byte("]}")) {
			// The end: nothing but an optional newline may follow.
			if n > 0 && prevComma {
				return false
			}
			rest, _ := io.ReadAll(br)
			if len(bytes.TrimLeft(rest, "\n")) != 0 {
				return false
			}
			if len(c.lines) > 0 {
				return send()
			}
			return true
		}
		if eof || !prevComma || len(line) == 0 || line[0] != '{' {
			return false
		}
		line, prevComma = bytes.CutSuffix(line, []byte(","))
		c.lines = append(c.lines, line)
		if len(c.lines) == linesPerChunk && !send() {
			return false
		}
	}
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

// Export writes regs in the registry file format, which Open reads as a
// snapshot and ParseFile (xapsd import) reads too: the way from a
// shared database back to the files, or to another server.
func Export(w io.Writer, regs []registry.Registration) error {
	sw := newSnapshotWriter(w, 0)
	for _, g := range regs {
		sw.add(record{User: g.User, AccountID: g.AccountID, DeviceToken: g.DeviceToken,
			Mailboxes: g.Mailboxes, RegistrationTime: g.Registered.UTC()})
	}
	return sw.finish()
}

// ParseFile reads the registrations of a database file written by this
// or the old xapsd, for importing them elsewhere.
func ParseFile(data []byte) ([]registry.Registration, error) {
	snap, err := decodeSnapshot(data)
	if err != nil {
		return nil, err
	}
	out := make([]registry.Registration, 0, len(snap.Records))
	for _, rec := range snap.Records {
		if rec.User == "" || rec.AccountID == "" || rec.DeviceToken == "" || len(rec.Mailboxes) == 0 {
			continue
		}
		out = append(out, registry.Registration{Key: registry.Key{User: registry.FoldUser(rec.User), AccountID: rec.AccountID,
			DeviceToken: rec.DeviceToken}, Mailboxes: rec.Mailboxes, Registered: rec.RegistrationTime})
	}
	return out, nil
}
