package registry

import "time"

// The index: the registrations in memory, filed by user, for fast
// /notify lookups. Only the registry's own methods change it; stores
// reach it through Memory.

// entry is the in-memory form: small, because a large server holds a
// million of them.
type entry struct {
	accountID   string
	deviceToken string
	boxes       *mailboxSet
	registered  int64 // unix nanoseconds
	// refreshed is the latest identical re-registration that was
	// acknowledged without a write (see Options.RegistrationRefresh). It lives in
	// memory only, for Remove: a device that registered again after
	// Apple's 410 timestamp keeps its registration. A restart forgets it,
	// which costs at most RegistrationRefresh of that protection.
	refreshed int64
}

// mailboxSet is shared between all registrations with the same list; most
// devices register the same few lists. refs counts those registrations:
// the last one to go takes the set with it, so memory follows the live
// registrations however many different lists were ever registered.
type mailboxSet struct {
	names []string // as registered
	match []string // normalised for /notify matching
	key   string   // its key in index.boxes
	refs  int
}

func (s *mailboxSet) contains(mailbox string) bool {
	for _, m := range s.match {
		if m == mailbox {
			return true
		}
	}
	return false
}

// index holds every registration. It is not safe for concurrent use: the
// Registry guards it with its mutex, and a store fills a fresh one alone.
type index struct {
	users  map[string][]entry
	boxes  map[string]*mailboxSet
	boxKey []byte // scratch for internBoxes
	// sizedFor is the number of users the users map was made for before
	// a load (presize), until fitToLive has looked at it.
	sizedFor int
	count    int
}

func newIndex() *index {
	return &index{users: make(map[string][]entry), boxes: make(map[string]*mailboxSet)}
}

// presize makes the users map for about n users before a load: growing
// it step by step would cost a good part of loading a million.
func (x *index) presize(n int) {
	x.users = make(map[string][]entry, n)
	x.sizedFor = n
}

// fitToLive makes the users map again, sized for the users it holds, when
// presize made it for far more: a Go map keeps its room when entries go,
// so a map sized from a snapshot of many expired registrations, or of
// users with several devices each, would hold that memory for good.
func (x *index) fitToLive() {
	if x.sizedFor > 2*len(x.users)+1024 {
		users := make(map[string][]entry, len(x.users))
		for u, regs := range x.users {
			users[u] = regs
		}
		x.users = users
	}
	x.sizedFor = 0
}

// reset empties the index, for a load that starts over.
func (x *index) reset() {
	x.users = make(map[string][]entry)
	x.boxes = make(map[string]*mailboxSet)
	x.count = 0
}

// internBoxes returns the shared set for a list, counting one more
// registration that uses it; releaseBoxes undoes that. The lookup key is
// built in a reused buffer, so a list seen before costs no allocation:
// loading a million registrations mostly sees the same few lists.
func (x *index) internBoxes(names []string) *mailboxSet {
	buf := x.boxKey[:0]
	for i, n := range names {
		if i > 0 {
			buf = append(buf, 0)
		}
		buf = append(buf, n...)
	}
	x.boxKey = buf
	if s, ok := x.boxes[string(buf)]; ok {
		s.refs++
		return s
	}
	s := &mailboxSet{names: append([]string(nil), names...), match: make([]string, len(names)), key: string(buf), refs: 1}
	for i, n := range names {
		s.match[i] = normalizeMailbox(n)
	}
	x.boxes[s.key] = s
	return s
}

func (x *index) releaseBoxes(s *mailboxSet) {
	if s.refs--; s.refs == 0 {
		delete(x.boxes, s.key)
	}
}

// find returns the index of the registration of account and token among
// regs, or -1.
func find(regs []entry, accountID, token string) int {
	for i := range regs {
		if regs[i].accountID == accountID && regs[i].deviceToken == token {
			return i
		}
	}
	return -1
}

// put inserts or replaces a registration. With keepNewer, a stored copy
// registered later stays: a load among all the others (a snapshot, the
// database's rows) can see one device twice, where an older xapsd stored
// its token in upper and in lower case apart.
func (x *index) put(g Registration, keepNewer bool) {
	g.User = FoldUser(g.User)
	g.DeviceToken = FoldToken(g.DeviceToken)
	registered := g.Registered.UnixNano()
	regs := x.users[g.User]
	if i := find(regs, g.AccountID, g.DeviceToken); i >= 0 {
		if keepNewer && regs[i].registered > registered {
			return
		}
		x.releaseBoxes(regs[i].boxes)
		regs[i] = entry{accountID: g.AccountID, deviceToken: g.DeviceToken, boxes: x.internBoxes(g.Mailboxes), registered: registered}
		return
	}
	e := entry{accountID: g.AccountID, deviceToken: g.DeviceToken, boxes: x.internBoxes(g.Mailboxes), registered: registered}
	x.users[g.User] = append(regs, e)
	x.count++
}

// del removes the registration of k, if there is one.
func (x *index) del(k Key) {
	k.User = FoldUser(k.User)
	k.DeviceToken = FoldToken(k.DeviceToken)
	regs := x.users[k.User]
	if i := find(regs, k.AccountID, k.DeviceToken); i >= 0 {
		x.removeAt(k.User, regs, i)
	}
}

// apply makes one committed change in memory.
func (x *index) apply(c Change) {
	if c.Del {
		x.del(c.Key)
	} else {
		x.put(c.Registration, false)
	}
}

// removeAt deletes regs[i] of user.
func (x *index) removeAt(user string, regs []entry, i int) {
	x.releaseBoxes(regs[i].boxes)
	regs = append(regs[:i], regs[i+1:]...)
	x.count--
	if len(regs) == 0 {
		delete(x.users, user)
	} else {
		x.users[user] = regs
	}
}

// replaceUser puts a store's registrations of user into memory, in place
// of what memory held for the user; none removes the user.
func (x *index) replaceUser(user string, regs []Registration) {
	old := x.users[user]
	for i := range old {
		x.releaseBoxes(old[i].boxes)
	}
	x.count -= len(old)
	if len(regs) == 0 {
		delete(x.users, user)
		return
	}
	// One device per token whatever its case (put with keepNewer): rows
	// an older xapsd stored in both spellings become the newer one.
	keep := make([]Registration, 0, len(regs))
next:
	for _, g := range regs {
		g.DeviceToken = FoldToken(g.DeviceToken)
		for i := range keep {
			if keep[i].AccountID == g.AccountID && keep[i].DeviceToken == g.DeviceToken {
				if g.Registered.After(keep[i].Registered) {
					keep[i] = g
				}
				continue next
			}
		}
		keep = append(keep, g)
	}
	es := make([]entry, 0, len(keep))
	for _, g := range keep {
		es = append(es, entry{accountID: g.AccountID, deviceToken: g.DeviceToken,
			boxes: x.internBoxes(g.Mailboxes), registered: g.Registered.UnixNano()})
	}
	x.users[user] = es
	x.count += len(es)
}

// all copies every registration out, sharing the mailbox lists, which
// are never changed in place.
func (x *index) all() []Registration {
	out := make([]Registration, 0, x.count)
	for u, regs := range x.users {
		for _, e := range regs {
			out = append(out, Registration{Key: Key{User: u, AccountID: e.accountID, DeviceToken: e.deviceToken},
				Mailboxes: e.boxes.names, Registered: time.Unix(0, e.registered)})
		}
	}
	return out
}
