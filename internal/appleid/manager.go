// Package appleid gets and renews the mail push certificate from Apple's
// push certificate service with an Apple ID, the way macOS Server did
// (docs/protocol.md#apple-cert-service), and keeps it in a state folder beside the registry.
//
// Apple stopped issuing these certificates on 2024-10-29: every request is
// answered with error -80010. What still matters is keeping an existing
// certificate (applecerts.ImportLegacy takes it over from the old xapsd's
// database.json), warning before it expires (creds.ExpiryWatch), and saying in
// one clear message why no new one comes and what to use instead. The
// request code is complete and tested against a stand-in for the service,
// in case Apple ever answers again.
//
// Invariants, because every request Apple answers sends the account holder
// an e-mail and creates certificates:
//   - each attempt is recorded on disk before it is sent, and at most one
//     /new request goes out per 24 hours, across restarts;
//   - an answer that cannot be read or stored never leads to an early new
//     request: the record, not the outcome, decides when the next may go;
//   - keys are on disk before the request that uses them is sent, and
//     issued certificates are on disk (atomicfile, mode 0600) before
//     anything else is done with them;
//   - failed renewals keep the current certificate and retry after 1h,
//     2h, 4h … 24h.
package appleid

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/xapsd/xapsd/internal/atomicfile"
	"github.com/xapsd/xapsd/internal/creds"
	"github.com/xapsd/xapsd/internal/logging"
)

// DefaultBaseURL is Apple's certificate service; requests go to its /new
// and /renew (docs/protocol.md#apple-cert-http).
const DefaultBaseURL = "https://identity.apple.com/pushcert/caservice"

// ErrNotStored says the state folder holds no mail certificate.
var ErrNotStored = errors.New("no Apple push certificate stored")

// Options configure a Manager.
type Options struct {
	AppleID      string // appleId
	PasswordHash string // appleIdHashedPassword: hex SHA-256 of the password (xapsd -pass)
	// VendorCertFile and VendorKeyFile are appleIdVendorCertificate and
	// appleIdVendorKey. Both empty: the manager still serves a stored
	// certificate but cannot ask Apple; Status and the log say why.
	VendorCertFile string
	VendorKeyFile  string
	Dir            string         // its folder: statedir.Dir.AppleCerts()
	BaseURL        string         // default DefaultBaseURL; tests point it at a stand-in
	Roots          *x509.CertPool // trust for BaseURL; nil = the system's
	Hostname       string         // in each request's Description; default os.Hostname()
	Log            logrus.FieldLogger
	Now            func() time.Time // default time.Now
	// Exclusive, when set, runs each request to Apple so that several
	// daemons sharing a registry never ask at the same time: ran false
	// means another one is asking, and this one looks again later.
	Exclusive func(ctx context.Context, work func() error) (ran bool, err error)
}

// Manager keeps the Apple ID push certificate. Its methods are safe for
// concurrent use; Run must be called at most once at a time.
type Manager struct {
	o         Options
	log       logrus.FieldLogger
	now       func() time.Time
	st        store
	vendor    *vendor
	vendorErr error
	jitter    float64

	// Test hooks.
	newKey    func() (*rsa.PrivateKey, error)
	afterPlan func(plan)

	mu        sync.Mutex
	mail      *x509.Certificate // stored mail certificate; nil when none
	lastErr   error             // why the last request failed; nil after a success
	next      plan
	notBefore time.Time // floor for the next request after one in this process
}

var hexHash = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)

// New checks the options and loads the vendor identity if configured. It
// writes nothing. A configured vendor file that does not load is an
// error; no vendor identity at all is not (see Options).
func New(o Options) (*Manager, error) {
	if o.AppleID == "" {
		return nil, errors.New("apple ID certificate manager: appleId is empty")
	}
	if !hexHash.MatchString(o.PasswordHash) {
		return nil, errors.New("apple ID certificate manager: appleIdHashedPassword must be 64 hexadecimal characters (the output of xapsd -pass)")
	}
	if o.Dir == "" {
		return nil, errors.New("apple ID certificate manager: no state folder")
	}
	if o.BaseURL == "" {
		o.BaseURL = DefaultBaseURL
	}
	o.BaseURL = strings.TrimRight(o.BaseURL, "/")
	if u, err := url.Parse(o.BaseURL); err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("apple ID certificate manager: service URL %q must be https://host/path", o.BaseURL)
	}
	if o.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "xapsd"
		}
		o.Hostname = h
	}
	if o.Log == nil {
		o.Log = logging.Discard()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	m := &Manager{
		o:      o,
		log:    o.Log,
		now:    o.Now,
		st:     store{dir: o.Dir},
		jitter: mrand.Float64(),
		newKey: func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, rsaBits) },
	}
	switch {
	case o.VendorCertFile == "" && o.VendorKeyFile == "":
		m.vendorErr = ErrNoVendor
	case o.VendorCertFile == "":
		return nil, errors.New("appleIdVendorCertificate must be set when appleIdVendorKey is set")
	case o.VendorKeyFile == "":
		return nil, errors.New("appleIdVendorKey must be set when appleIdVendorCertificate is set")
	default:
		v, err := loadVendor(o.VendorCertFile, o.VendorKeyFile)
		if err != nil {
			return nil, err
		}
		m.vendor = v
	}
	// The folder is created on the first write, not here, so that
	// xapsd --check-config run as root leaves no root-owned folder behind.
	m.refresh()
	return m, nil
}

// MailFile is the file holding the mail certificate and its key, for
// messages and for creds.ExpiryWatch.
func (m *Manager) MailFile() string { return m.st.servicePath(services[mailNo]) }

// Stored loads the stored mail certificate as a push credential. It
// returns an error wrapping ErrNotStored when there is none, and creds'
// errors (expired, no topic…) for one that is not usable.
func (m *Manager) Stored() (*creds.Credential, error) {
	p := m.MailFile()
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s", ErrNotStored, m.st.dir)
	}
	return creds.Load(creds.Files{PEMCert: p}, m.now())
}

// Status says why there is no usable Apple ID certificate right now, or
// returns nil when there is one. It is cheap: /register may call it.
func (m *Manager) Status() error {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var base error
	switch {
	case m.mail == nil:
		base = fmt.Errorf("%w in %s", ErrNotStored, m.st.dir)
	case now.Before(m.mail.NotBefore):
		base = fmt.Errorf("push certificate %s is not valid before %s", m.MailFile(), m.mail.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(m.mail.NotAfter):
		base = creds.ExpiredError(m.MailFile(), m.mail.NotAfter)
	default:
		return nil
	}
	switch {
	case m.vendorErr != nil:
		return fmt.Errorf("%w; %w", base, m.vendorErr)
	case m.lastErr != nil:
		return fmt.Errorf("%w; the last request to Apple failed: %w", base, m.lastErr)
	case m.next.kind != planNothing && !m.next.at.IsZero():
		return fmt.Errorf("%w; next request to Apple's certificate service at %s", base, m.next.at.UTC().Format(time.RFC3339))
	}
	return base
}

// refresh reloads the stored mail certificate.
func (m *Manager) refresh() {
	h, err := m.st.load(services[mailNo])
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		m.log.WithError(err).Warn("stored Apple push certificate unreadable")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mail = nil
	if h != nil {
		m.mail = h.Cert
	}
}

// Run keeps the certificate: it requests one when none is stored (never
// more than once a day), renews the stored one 30 days before it expires,
// and retries failed renewals with backoff. onChange (if not nil) gets
// each newly stored mail certificate; the one stored at the start is for
// the caller to load with Stored. Run returns when ctx ends.
func (m *Manager) Run(ctx context.Context, onChange func(*creds.Credential)) {
	changed := func() {
		cred, err := m.Stored()
		if err != nil {
			// Cannot happen for a certificate just checked and stored,
			// short of the disk failing under us.
			m.log.WithError(err).Error("newly stored Apple push certificate does not load")
			return
		}
		if onChange != nil {
			onChange(cred)
		}
	}
	if m.recoverAnswer() {
		changed()
	}
	var logged plan
	vendorLogged := false
	for ctx.Err() == nil {
		now := m.now()
		m.refresh()
		rec, err := m.st.readAttempts(now)
		if err != nil {
			m.log.WithError(err).Warn("attempt record unreadable; treating it as a request sent when it was last written")
		}
		m.mu.Lock()
		mail, floor := m.mail, m.notBefore
		m.mu.Unlock()
		p := decide(mail, rec, now, m.vendor != nil, m.jitter)
		if p.kind != planNothing {
			p.at = later(p.at, floor)
		}
		m.mu.Lock()
		m.next = p
		m.mu.Unlock()
		if m.afterPlan != nil {
			m.afterPlan(p)
		}

		if p.kind == planNothing {
			if !vendorLogged {
				m.logNoVendor(mail, now)
				vendorLogged = true
			}
			sleep(ctx, recheck)
			continue
		}
		if wait := p.at.Sub(now); wait > 0 {
			if p != logged {
				m.log.WithFields(logrus.Fields{"request": p.kind.String(), "at": p.at.UTC().Format(time.RFC3339)}).
					Info("next request to Apple's push certificate service")
				logged = p
			}
			sleep(ctx, min(wait, recheck))
			continue
		}

		if m.o.Exclusive != nil {
			var ran bool
			ran, err = m.o.Exclusive(ctx, func() error { return m.request(ctx, p.kind, mail) })
			if err == nil && !ran {
				m.log.Info("another xapsd sharing the registry is asking Apple's certificate service; looking again later")
				sleep(ctx, recheck)
				continue
			}
		} else {
			err = m.request(ctx, p.kind, mail)
		}
		m.mu.Lock()
		m.lastErr = err
		m.notBefore = m.now().Add(minGap)
		m.mu.Unlock()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			m.logFailure(p.kind, mail, err)
			continue
		}
		changed()
	}
}

func (m *Manager) logNoVendor(mail *x509.Certificate, now time.Time) {
	l := m.log.WithError(m.vendorErr)
	switch {
	case mail == nil:
		l.Error("no Apple push certificate stored and none can be requested")
	case !now.Before(mail.NotAfter):
		l.WithField("file", m.MailFile()).Error("stored Apple push certificate has expired and cannot be renewed")
	default:
		l.WithFields(logrus.Fields{"file": m.MailFile(), "expires": mail.NotAfter.UTC().Format(time.RFC3339)}).
			Warn("stored Apple push certificate is used but cannot be renewed")
	}
}

func (m *Manager) logFailure(kind planKind, mail *x509.Certificate, err error) {
	l := m.log.WithField("request", kind.String())
	if mail != nil {
		l = l.WithFields(logrus.Fields{"file": m.MailFile(), "expires": mail.NotAfter.UTC().Format(time.RFC3339)})
	}
	if errors.Is(err, ErrDiscontinued) {
		// The error text is the whole explanation (issue 4).
		l.Error(err.Error())
		return
	}
	if kind == planRenew {
		l.WithError(err).Warn("renewing the Apple push certificate failed; the current one stays in use")
		return
	}
	l.WithError(err).Error("requesting an Apple push certificate failed")
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// failuresAtCap is a failure count whose backoff is the 24 h maximum:
// after -80010 there is no point in asking sooner.
const failuresAtCap = 6

// request sends one /new or /renew and stores what comes back. Everything
// that must be on disk before sending is written first; a failure there
// means nothing is sent.
func (m *Manager) request(ctx context.Context, kind planKind, mail *x509.Certificate) error {
	log := m.log.WithField("request", kind.String())
	if err := m.st.ensure(); err != nil {
		return err
	}
	var (
		reqs [len(services)]certRequest
		keys [len(services)]*rsa.PrivateKey
	)
	for i, svc := range services {
		reqs[i].Service = svc
		if kind == planRenew {
			// Renewal reuses each key and names the serial it replaces
			// as macOS Server did. A service with nothing stored (an import that
			// had only the mail certificate) gets a fresh key.
			h, err := m.st.load(svc)
			switch {
			case err == nil:
				keys[i], reqs[i].Serial = h.Key, h.Cert.SerialNumber
			case !errors.Is(err, fs.ErrNotExist):
				log.WithError(err).Warn("asking for a fresh certificate for this service")
			}
		}
		if keys[i] == nil {
			k, err := m.newKey()
			if err != nil {
				return fmt.Errorf("generate %s key: %w", svc.Name, err)
			}
			keys[i] = k
		}
		reqs[i].Key = keys[i]
	}
	inner, err := innerPlist(reqs[:], m.o.Hostname, m.o.AppleID, m.o.PasswordHash)
	if err != nil {
		return err
	}
	body, err := outerPlist(inner, m.vendor)
	if err != nil {
		return err
	}

	// From here on, in this order: old answer gone, keys and the attempt
	// on disk, then send.
	if err := m.st.remove(answerFile); err != nil {
		return fmt.Errorf("remove old answer: %w", err)
	}
	if err := m.st.saveRequestKeys(keys); err != nil {
		return err
	}
	now := m.now()
	rec, _ := m.st.readAttempts(now)
	a := &attempt{Time: now, Outcome: outcomeSent}
	if kind == planRenew {
		if rec.Renew != nil {
			a.Failures = rec.Renew.Failures
		}
		a.Failures++
		rec.Renew = a
	} else {
		rec.New = a
	}
	if err := m.st.writeAttempts(rec); err != nil {
		return err
	}

	target := m.o.BaseURL + "/" + kind.String()
	log.WithField("url", target).Info("sending a request to Apple's push certificate service")
	stored, err := m.exchange(ctx, target, body, keys, log)
	if err == nil && !stored {
		err = errors.New("the answer held no usable mail certificate")
	}
	if err != nil {
		a.Outcome = "error: " + err.Error()
		if kind == planRenew && errors.Is(err, ErrDiscontinued) {
			a.Failures = max(a.Failures, failuresAtCap)
		}
	} else {
		a.Outcome, a.Failures = "ok", 0
	}
	if werr := m.st.writeAttempts(rec); werr != nil {
		// The "sent" record stays and keeps the next attempt away.
		log.WithError(werr).Warn("could not record the outcome of the request")
	}
	if err != nil {
		return err
	}
	m.refresh()
	if cur, _ := m.st.load(services[mailNo]); cur != nil && mail != nil {
		oldTopic, _ := creds.TopicFromCertificate(mail)
		newTopic, _ := creds.TopicFromCertificate(cur.Cert)
		if oldTopic != newTopic {
			log.WithFields(logrus.Fields{"old": oldTopic, "new": newTopic}).
				Warn("the push topic changed; devices pick up the new one when they next register")
		}
	}
	// The certificates are stored; what is left is only for recovery.
	for _, f := range []string{answerFile, requestKeysFile} {
		if err := m.st.remove(f); err != nil {
			log.WithError(err).Warn("could not remove a leftover file from the state folder")
		}
	}
	log.WithField("file", m.MailFile()).Info("stored a new Apple push certificate")
	return nil
}

// exchange posts the request, saves the raw answer and stores the
// certificates in it. It reports whether the mail certificate was stored.
func (m *Manager) exchange(ctx context.Context, target string, body []byte, keys [len(services)]*rsa.PrivateKey,
	log logrus.FieldLogger) (bool, error) {
	var raw bytes.Buffer
	resp, err := post(ctx, target, body, m.o.Roots, &raw)
	if raw.Len() > 0 {
		// Kept before anything is parsed, so certificates Apple issued
		// survive a parser that chokes; recoverAnswer reads it.
		if werr := atomicfile.WriteFile(m.st.path(answerFile), raw.Bytes(), fileMode); werr != nil {
			log.WithError(werr).Warn("could not keep Apple's raw answer")
		}
	}
	if err != nil {
		return false, err
	}
	return m.storeAnswer(resp, keysByNo(keys), log)
}

func keysByNo(keys [len(services)]*rsa.PrivateKey) map[int]*rsa.PrivateKey {
	out := map[int]*rsa.PrivateKey{}
	for i, k := range keys {
		out[i] = k
	}
	return out
}

// storeAnswer checks an HTTP answer and stores its certificates.
func (m *Manager) storeAnswer(resp *httpResponse, keys map[int]*rsa.PrivateKey, log logrus.FieldLogger) (bool, error) {
	for _, l := range resp.Skipped {
		log.WithField("line", clip(l)).Warn("ignored a malformed header line in Apple's answer")
	}
	if resp.Status != 200 {
		return false, fmt.Errorf("certificate service answered HTTP %d %s", resp.Status, clip(resp.Reason))
	}
	certs, problems, err := parseAnswer(resp.Body)
	if err != nil {
		return false, err
	}
	mailStored, more, err := m.storeIssued(certs, keys)
	problems = append(problems, more...)
	for _, p := range problems {
		log.Warn(p)
	}
	if err != nil {
		return mailStored, err
	}
	if !mailStored && len(problems) > 0 {
		return false, fmt.Errorf("the answer held no usable mail certificate: %s", strings.Join(problems, "; "))
	}
	return mailStored, nil
}

// storeIssued writes each issued certificate that belongs to a key xapsd
// sent, mail first. A certificate that is not newer than the one stored
// for its service is left out, so a stale answer never replaces a renewal.
func (m *Manager) storeIssued(certs map[int]issued, keys map[int]*rsa.PrivateKey) (mailStored bool, problems []string, err error) {
	order := []int{mailNo}
	for _, s := range services {
		if s.No != mailNo {
			order = append(order, s.No)
		}
	}
	for _, no := range order {
		c, ok := certs[no]
		svc := services[no]
		if !ok {
			problems = append(problems, fmt.Sprintf("the answer has no %s certificate", svc.Name))
			continue
		}
		key := keys[no]
		if key == nil || !key.PublicKey.Equal(c.Cert.PublicKey) {
			problems = append(problems, fmt.Sprintf("the %s certificate of the answer is not for the key xapsd sent", svc.Name))
			continue
		}
		if no == mailNo {
			if _, err := creds.TopicFromCertificate(c.Cert); err != nil {
				problems = append(problems, fmt.Sprintf("the mail certificate of the answer: %v", err))
				continue
			}
		}
		if cur, err := m.st.load(svc); err == nil && !c.Cert.NotAfter.After(cur.Cert.NotAfter) {
			problems = append(problems, fmt.Sprintf("the %s certificate of the answer is not newer than the stored one", svc.Name))
			continue
		}
		if err := m.st.ensure(); err != nil {
			return mailStored, problems, err
		}
		if err := m.st.save(svc, c.Cert, key); err != nil {
			return mailStored, problems, err
		}
		if no == mailNo {
			mailStored = true
		}
	}
	return mailStored, problems, nil
}

// recoverAnswer stores the certificates of an answer that was saved but
// not handled (the process died in between), using the request's saved
// keys. It reports whether a mail certificate was stored.
func (m *Manager) recoverAnswer() bool {
	data, err := readState(m.st.path(answerFile))
	if err != nil {
		return false
	}
	log := m.log.WithField("file", m.st.path(answerFile))
	keys, err := m.st.loadRequestKeys()
	if err != nil {
		log.WithError(err).Debug("saved answer without the request's keys; ignored")
		return false
	}
	resp, err := readResponse(bufio.NewReader(bytes.NewReader(data)))
	if err != nil {
		log.WithError(err).Debug("saved answer incomplete; ignored")
		return false
	}
	stored, err := m.storeAnswer(resp, keys, log)
	if err != nil || !stored {
		log.WithError(err).Debug("saved answer gave no certificate")
		return false
	}
	m.refresh()
	for _, f := range []string{answerFile, requestKeysFile} {
		m.st.remove(f)
	}
	log.WithField("cert", m.MailFile()).Info("stored the Apple push certificate from a saved answer")
	return true
}
