package registry

import (
	"context"
	"encoding/json"
	"time"
)

// record is one line of the journal and, without Seq and Op, one element
// of the snapshot's Registrations array. The field names follow the old
// daemon's database.json so that the files stay readable to its users.
type record struct {
	Seq              uint64    `json:"Seq,omitempty"`
	Op               string    `json:"Op,omitempty"` // "put" or "del"; empty in snapshots
	User             string    `json:"User"`
	AccountID        string    `json:"AccountId"`
	DeviceToken      string    `json:"DeviceToken"`
	Mailboxes        []string  `json:"Mailboxes,omitempty"`
	RegistrationTime time.Time `json:"RegistrationTime,omitzero"`

	// For a shared database, where another daemon may have stored a newer
	// copy since this one looked (never written to the files): a del
	// with before removes only a registration made before that time, a
	// put with keepNewer replaces only an older one.
	before    time.Time
	keepNewer bool
}

const (
	opPut = "put"
	opDel = "del"
)

func delRec(seq uint64, user, accountID, token string) record {
	return record{Seq: seq, Op: opDel, User: user, AccountID: accountID, DeviceToken: token}
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only strings, a time and numbers: marshalling cannot fail.
		panic(err)
	}
	return b
}

// batch collects changes that become durable together, with one write and
// one fsync of the journal or one database transaction (group commit);
// every caller that added to it waits on done. They are applied to memory
// once stored.
type batch struct {
	recs []record
	last uint64
	adds int // registrations it adds (Registry.adding)
	done chan struct{}
	err  error
}

func newBatch() *batch { return &batch{done: make(chan struct{})} }

func (b *batch) addRecord(rec record) {
	b.last = rec.Seq
	b.recs = append(b.recs, rec)
}

func (b *batch) empty() bool { return len(b.recs) == 0 }

// lines is the batch as journal lines. The writer builds them, outside
// the registry's lock, which lookups share.
func (b *batch) lines() []byte {
	var buf []byte
	for _, rec := range b.recs {
		buf = append(buf, mustMarshal(rec)...)
		buf = append(buf, '\n')
	}
	return buf
}

// takePending swaps in a new batch and returns the one that was pending,
// or nil when it holds nothing.
func (r *Registry) takePending() *batch {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.pending
	if b.empty() {
		return nil
	}
	r.pending = newBatch()
	return b
}

// timedSave makes b durable with save and reports the time it took (OnSync).
func (r *Registry) timedSave(b *batch, save func() error) error {
	start := time.Now()
	err := save()
	if r.opts.OnSync != nil {
		r.opts.OnSync(len(b.recs), time.Since(start))
	}
	return err
}

func (b *batch) finish(err error) {
	b.err = err
	close(b.done)
}

// wait returns the batch's outcome, or ctx's error when ctx ends first.
// A batch that is already written wins over a context that ended at the
// same moment: the caller must not report a stored registration as lost.
func (b *batch) wait(ctx context.Context) error {
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		select {
		case <-b.done:
			return b.err
		default:
			return ctx.Err()
		}
	}
}
