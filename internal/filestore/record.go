package filestore

import (
	"encoding/json"
	"time"

	"github.com/xapsd/xapsd/internal/registry"
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
}

const (
	opPut = "put"
	opDel = "del"
)

// journalRecord is the journal line of change number seq. A change's
// Before and KeepNewer are not written: memory checked them, and the
// files are this daemon's alone.
func journalRecord(seq uint64, c registry.Change) record {
	if c.Del {
		return record{Seq: seq, Op: opDel, User: c.User, AccountID: c.AccountID, DeviceToken: c.DeviceToken}
	}
	return record{Seq: seq, Op: opPut, User: c.User, AccountID: c.AccountID, DeviceToken: c.DeviceToken,
		Mailboxes: c.Mailboxes, RegistrationTime: c.Registered}
}

// registration is the registration a snapshot line or a put holds.
func (rec record) registration() registry.Registration {
	return registry.Registration{Key: registry.Key{User: rec.User, AccountID: rec.AccountID, DeviceToken: rec.DeviceToken},
		Mailboxes: rec.Mailboxes, Registered: rec.RegistrationTime}
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only strings, a time and numbers: marshalling cannot fail.
		panic(err)
	}
	return b
}
