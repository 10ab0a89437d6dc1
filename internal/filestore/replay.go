package filestore

import "github.com/sirupsen/logrus"

// seqLimit is far above any sequence number a journal reaches (a million
// records a second for 146,000 years) and far below the wrap at 2^64: a
// number above it is damage, and the registry never counts up to it.
const seqLimit = 1 << 62

// maxSeqJump is the largest gap replay accepts after the last record it
// has no later record to check against. Real gaps are the numbers of
// records whose write failed.
const maxSeqJump = 1 << 32

// replayer applies journal records in order and checks their sequence
// numbers, which the writer hands out strictly increasing across every
// segment. Records at or below the snapshot's number are already in it.
// A record out of that order is damage (an edited or corrupted line):
// replay keeps the one record that fits between its neighbours and skips
// the other, instead of adopting a number that would hide every later
// record, or wrap.
type replayer struct {
	log   logrus.FieldLogger
	apply func(record)
	last  uint64 // number of the last record applied, or the snapshot's
	// noStart: the snapshot is lost, so the journal's first record
	// follows records nobody has any more; that is reported elsewhere,
	// not as a gap.
	noStart bool

	pending      *record // the newest record, applied once the next one confirms it
	pendingWhere string
	// segStart is the first sequence number the segment being read may
	// hold: the number in its name (see journal.openSegment).
	segStart uint64

	damaged int
	where   []string // file:line of the first damaged records
	gaps    int
	missing uint64
}

func (p *replayer) feed(rec record, where string) {
	switch {
	case rec.Seq > seqLimit:
		p.damage(where)
	case p.pending == nil:
		switch {
		case rec.Seq > p.last:
			p.hold(rec, where)
		case rec.Seq < p.segStart:
			// Not "already in the snapshot": the segment's name says
			// it was written after the snapshot's last record, so its
			// number is damaged, and skipping it loses a change.
			p.damageBelowSegment(where)
		}
	case rec.Seq > p.pending.Seq:
		p.commit()
		p.hold(rec, where)
	case rec.Seq > p.last:
		// rec fits after the last applied record: the held one jumped
		// too far ahead.
		p.damage(p.pendingWhere)
		p.hold(rec, where)
	default:
		// Behind what is applied although newer records came before.
		p.damage(where)
	}
}

func (p *replayer) hold(rec record, where string) {
	p.pending, p.pendingWhere = &rec, where
}

// finish applies the last record unless its jump is beyond any gap that
// failed writes could explain.
func (p *replayer) finish() {
	if p.pending == nil {
		return
	}
	if p.pending.Seq-p.last > maxSeqJump {
		p.damage(p.pendingWhere)
		p.pending = nil
		return
	}
	p.commit()
}

func (p *replayer) commit() {
	rec := p.pending
	p.pending = nil
	if gap := rec.Seq - p.last - 1; gap > 0 && !p.noStart {
		p.gaps++
		p.missing += gap
	}
	p.noStart = false
	p.last = rec.Seq
	p.apply(*rec)
}

func (p *replayer) damage(where string) {
	p.count(where)
	p.log.WithField("record", where).Error("skipping a journal record whose sequence number does not fit between its neighbours")
}

func (p *replayer) damageBelowSegment(where string) {
	p.count(where)
	p.log.WithFields(map[string]any{"record": where, "segment_start": p.segStart}).
		Error("skipping a journal record whose sequence number is below its segment's first number, which the snapshot already covers: the record is damaged, and the change it held is lost")
}

func (p *replayer) count(where string) {
	p.damaged++
	if len(p.where) < 10 {
		p.where = append(p.where, where)
	}
}
