package filestore

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"
	"time"
)

// FuzzDecodeSnapshot: any file content either loads or is an error, and
// the fast line-by-line reader agrees with plain encoding/json whenever it
// accepts a file.
func FuzzDecodeSnapshot(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte(`{"Users":{"a":{"Accounts":{"x":{"DeviceToken":"ab","Mailboxes":["INBOX"]}}}}}`))
	f.Add([]byte("{\"Version\":2,\"Seq\":3,\"Registrations\":[\n{\"User\":\"a\",\"AccountId\":\"x\",\"DeviceToken\":\"ab\",\"Mailboxes\":[\"INBOX\"],\"RegistrationTime\":\"2026-01-02T03:04:05Z\"},\n{\"User\":\"b\",\"AccountId\":\"y\",\"DeviceToken\":\"cd\"}\n]}\n"))
	f.Add([]byte("{\"Version\":2,\"Seq\":0,\"Registrations\":[\n]}\n"))
	f.Add([]byte(`{"Version":9}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := decodeSnapshot(data)
		if err != nil {
			return
		}
		if fast, ok := decodeFast(data); ok {
			slow, err := decodeSlow(data)
			if err != nil {
				t.Fatalf("fast path accepted what encoding/json rejects: %v", err)
			}
			if fast.Seq != slow.Seq || len(fast.Records) != len(slow.Records) {
				t.Fatalf("fast %d/%d records, slow %d/%d", fast.Seq, len(fast.Records), slow.Seq, len(slow.Records))
			}
			for i := range fast.Records {
				a, b := fast.Records[i], slow.Records[i]
				if a.User != b.User || a.AccountID != b.AccountID || a.DeviceToken != b.DeviceToken ||
					!slices.Equal(a.Mailboxes, b.Mailboxes) || !a.RegistrationTime.Equal(b.RegistrationTime) {
					t.Fatalf("record %d: fast %+v slow %+v", i, a, b)
				}
			}
		}
		// What loads must survive a write and a re-read unchanged.
		var buf bytes.Buffer
		sw := newSnapshotWriter(&buf, s.Seq)
		var kept []record
		for _, r := range s.Records {
			r.RegistrationTime = r.RegistrationTime.UTC()
			if r.RegistrationTime.Year() < 0 || r.RegistrationTime.Year() > 9999 {
				r.RegistrationTime = time.Time{}
			}
			sw.add(r)
			kept = append(kept, r)
		}
		if err := sw.finish(); err != nil {
			t.Fatalf("write: %v", err)
		}
		again, err := decodeSnapshot(buf.Bytes())
		if err != nil || again.Seq != s.Seq || len(again.Records) != len(kept) {
			t.Fatalf("round trip: %v (%d vs %d records)", err, len(again.Records), len(kept))
		}
	})
}

func FuzzDecodeJournalLine(f *testing.F) {
	f.Add([]byte(`{"Seq":1,"Op":"put","User":"a","AccountId":"x","DeviceToken":"ab","Mailboxes":["INBOX"],"RegistrationTime":"2026-01-02T03:04:05Z"}`))
	f.Add([]byte(`{"Seq":2,"Op":"del","User":"a","AccountId":"x","DeviceToken":"ab"}`))
	f.Add([]byte(`{"Seq":2,"Op":"del","User":"a","AccountId":"x","Devi`))
	f.Fuzz(func(t *testing.T, line []byte) {
		rec, err := decodeJournalLine(line)
		if err == nil && (rec.Seq == 0 || rec.User == "" || rec.AccountID == "" || rec.DeviceToken == "") {
			t.Fatalf("accepted an incomplete record %+v", rec)
		}
	})
}

// FuzzParseRecordLine: the reflection-free reader must give exactly what
// encoding/json gives for every line it accepts.
func FuzzParseRecordLine(f *testing.F) {
	f.Add([]byte(`{"User":"a","AccountId":"x","DeviceToken":"ab","Mailboxes":["INBOX","Notes"],"RegistrationTime":"2026-01-02T03:04:05.123456789Z"}`))
	f.Add([]byte(`{"User":"a","AccountId":"x","DeviceToken":"ab","Mailboxes":[]}`))
	f.Add([]byte(`{"User":"a\u00e4","AccountId":"x","DeviceToken":"ab"}`))
	f.Add([]byte(`{"User":"a","User":"b","AccountId":"x","DeviceToken":"ab"}`))
	f.Add([]byte(`{"User":"a","AccountId":"x","DeviceToken":"ab","RegistrationTime":"2026-01-02T03:04:05+01:00"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		fast, ok := parseFlat(line)
		if !ok {
			return
		}
		var slow record
		if err := json.Unmarshal(line, &slow); err != nil {
			t.Fatalf("parseFlat accepted %q, encoding/json says %v", line, err)
		}
		if fast.User != slow.User || fast.AccountID != slow.AccountID || fast.DeviceToken != slow.DeviceToken ||
			!slices.Equal(fast.Mailboxes, slow.Mailboxes) || (fast.Mailboxes == nil) != (slow.Mailboxes == nil) ||
			!fast.RegistrationTime.Equal(slow.RegistrationTime) {
			t.Fatalf("%q: fast %+v, encoding/json %+v", line, fast, slow)
		}
	})
}

// FuzzSalvageSnapshot: whatever a damaged file holds, salvaging it never
// fails, keeps only whole registrations, and keeps every one of a file
// that parses in our layout.
func FuzzSalvageSnapshot(f *testing.F) {
	good := "{\"Version\":2,\"Seq\":3,\"Registrations\":[\n{\"User\":\"a\",\"AccountId\":\"x\",\"DeviceToken\":\"ab\",\"Mailboxes\":[\"INBOX\"]},\n{\"User\":\"b\",\"AccountId\":\"y\",\"DeviceToken\":\"cd\"}\n]}\n"
	f.Add([]byte(good))
	f.Add([]byte(good[:70]))
	f.Add([]byte("\x00\x00\x00\n{\"User\":\"a\",\"AccountId\":\"x\",\"DeviceToken\":\"ab\"},\n"))
	f.Add([]byte("null"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var kept []record
		sv := salvageSnapshot(data, func(r record) { kept = append(kept, r) })
		if sv.kept != len(kept) {
			t.Fatalf("kept %d, applied %d", sv.kept, len(kept))
		}
		for _, r := range kept {
			if r.User == "" || r.AccountID == "" || r.DeviceToken == "" || r.Seq != 0 || r.Op != "" {
				t.Fatalf("kept a record that is not a registration: %+v", r)
			}
		}
		if fast, ok := decodeFast(data); ok && (len(fast.Records) != len(kept) || sv.bad != 0 || sv.seq != fast.Seq) {
			// decodeFast also takes records without a key; salvage
			// only whole ones.
			whole := 0
			for _, r := range fast.Records {
				if r.User != "" && r.AccountID != "" && r.DeviceToken != "" {
					whole++
				}
			}
			if whole != len(kept) || sv.seq != fast.Seq {
				t.Fatalf("salvage of a good file kept %d of %d (seq %d vs %d)", len(kept), whole, sv.seq, fast.Seq)
			}
		}
	})
}
