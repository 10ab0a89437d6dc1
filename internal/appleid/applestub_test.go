package appleid

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

// stubMode is how the stand-in answers.
type stubMode int

const (
	stubNormal       stubMode = iota
	stubDiscontinued          // ErrorCode -80010, as Apple since 2024-10-29
	stubMalformed             // the two nameless header lines Apple sent in 2023
	stubCut                   // issues, then drops the connection mid-answer
	stubChunked               // chunked transfer encoding, no Content-Length
	stubHTTP500               // a plain server error
)

// stubRequest is what the stand-in saw in one request, after checking it.
type stubRequest struct {
	Kind    string         // "new" or "renew"
	Serials map[int]string // CertificateSerialNumber by CertRequestNo (renew)
	Keys    map[int]*rsa.PublicKey
	Issued  map[int]*x509.Certificate // what it issued, if it did
}

// appleStub is an in-process stand-in for Apple's push certificate
// service: HTTP/1.1 over TLS on 127.0.0.1, written by hand so it can send
// what net/http would refuse to. It checks each request the way the real
// service must have (signature with the vendor key, five CSRs, account)
// and issues certificates from a test CA, the mail one with a UID topic.
type appleStub struct {
	t       *testing.T
	ca      *testpki.CA
	vendor  *x509.Certificate
	account string
	hash    string
	ln      net.Listener
	now     func() time.Time

	// during, if set, runs after a request is read and before it is
	// answered: the moment a crash would lose the answer.
	during func(kind string)

	mu       sync.Mutex
	mode     stubMode
	requests []stubRequest
	problems []string
	// issued remembers every certificate by serial (hex), to check the
	// serials of renewals and keep the topic of a renewed certificate.
	issued map[string]*x509.Certificate
	wg     sync.WaitGroup
}

func newAppleStub(t *testing.T, fx *fixture, now func() time.Time) *appleStub {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{fx.server.TLSCertificate()}})
	if err != nil {
		t.Fatal(err)
	}
	s := &appleStub{t: t, ca: fx.ca, vendor: fx.vendor.Cert, account: testAccount, hash: testHash, ln: ln, now: now,
		issued: map[string]*x509.Certificate{}}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, p := range s.problems {
			t.Errorf("apple stub: %s", p)
		}
	})
	return s
}

func (s *appleStub) URL() string { return "https://" + s.ln.Addr().String() + "/pushcert/caservice" }

func (s *appleStub) setMode(m stubMode) {
	s.mu.Lock()
	s.mode = m
	s.mu.Unlock()
}

func (s *appleStub) seen() []stubRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]stubRequest(nil), s.requests...)
}

func (s *appleStub) problem(format string, args ...any) {
	s.mu.Lock()
	s.problems = append(s.problems, fmt.Sprintf(format, args...))
	s.mu.Unlock()
}

func (s *appleStub) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			s.handle(c)
		}()
	}
}

func (s *appleStub) handle(c net.Conn) {
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		s.problem("read request: %v", err)
		return
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		s.problem("read body: %v", err)
		return
	}
	kind, ok := strings.CutPrefix(req.URL.Path, "/pushcert/caservice/")
	if !ok || req.Method != "POST" || (kind != "new" && kind != "renew") {
		s.problem("request %s %s", req.Method, req.URL.Path)
		return
	}
	// The headers of docs/protocol.md#apple-cert-http.
	for name, want := range map[string]string{
		"Content-Type":    "text/x-xml-plist",
		"User-Agent":      "Servermgrd%20Plugin/6.0 CFNetwork/811.11 Darwin/16.7.0 (x86_64)",
		"Accept":          "*/*",
		"Accept-Language": "en-us",
	} {
		if got := req.Header.Get(name); got != want {
			s.problem("header %s = %q, want %q", name, got, want)
		}
	}
	if !req.Close {
		s.problem("request without Connection: close")
	}
	if s.during != nil {
		s.during(kind)
	}
	sr, err := s.check(kind, body)
	if err != nil {
		s.problem("%s request: %v", kind, err)
		writeStubResponse(c, 400, nil, []byte("bad request"))
		return
	}

	s.mu.Lock()
	mode := s.mode
	s.mu.Unlock()
	switch mode {
	case stubDiscontinued:
		s.record(sr)
		writeStubResponse(c, 200, nil, []byte(discontinuedAnswer))
		return
	case stubHTTP500:
		s.record(sr)
		writeStubResponse(c, 500, nil, []byte("Internal Server Error"))
		return
	}
	sr.Issued = map[int]*x509.Certificate{}
	for no, pub := range sr.Keys {
		cert, err := s.issue(no, pub, sr.Serials[no])
		if err != nil {
			s.problem("issue: %v", err)
			return
		}
		sr.Issued[no] = cert
	}
	s.record(sr)
	answer := stubAnswer(sr.Issued)
	switch mode {
	case stubMalformed:
		writeStubResponse(c, 200, []string{"1;: mode=block", "max-age=31536000;: includeSubdomains"}, answer)
	case stubCut:
		head := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/x-xml-plist\r\nContent-Length: %d\r\n\r\n", len(answer))
		c.Write([]byte(head))
		c.Write(answer[:len(answer)/3])
		// Drop the connection the hard way, as a dying proxy would.
		if tc, ok := c.(*tls.Conn); ok {
			tc.NetConn().Close()
		}
	case stubChunked:
		var b bytes.Buffer
		b.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/x-xml-plist\r\nTransfer-Encoding: chunked\r\n\r\n")
		for rest := answer; len(rest) > 0; {
			n := min(len(rest), 1000)
			fmt.Fprintf(&b, "%x;ext=1\r\n", n)
			b.Write(rest[:n])
			b.WriteString("\r\n")
			rest = rest[n:]
		}
		b.WriteString("0\r\nX-Trailer: yes\r\n\r\n")
		c.Write(b.Bytes())
	default:
		writeStubResponse(c, 200, nil, answer)
	}
}

func (s *appleStub) record(sr stubRequest) {
	s.mu.Lock()
	s.requests = append(s.requests, sr)
	s.mu.Unlock()
}

// writeStubResponse writes a Content-Length response with Apple's kind of
// headers; extra lines go in the middle, where Apple's broken ones were.
func writeStubResponse(c io.Writer, status int, extra []string, body []byte) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	b.WriteString("Server: Apple\r\nContent-Type: text/x-xml-plist\r\n")
	for _, l := range extra {
		b.WriteString(l + "\r\n")
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\nConnection: close\r\n\r\n", len(body))
	b.Write(body)
	c.Write(b.Bytes())
}

// check verifies a request as the service would and returns what it asks
// for.
func (s *appleStub) check(kind string, body []byte) (stubRequest, error) {
	sr := stubRequest{Kind: kind, Serials: map[int]string{}, Keys: map[int]*rsa.PublicKey{}}
	v, err := decodePlist(body)
	if err != nil {
		return sr, err
	}
	outer, ok := v.(map[string]any)
	if !ok || len(outer) != 4 {
		return sr, fmt.Errorf("outer plist is not a dict of four keys: %#v", v)
	}
	chainDER, _ := outer["PushCertCertificateChain"].([]byte)
	chain, err := x509.ParseCertificates(chainDER)
	if err != nil || len(chain) == 0 {
		return sr, fmt.Errorf("PushCertCertificateChain: %v", err)
	}
	if !chain[0].Equal(s.vendor) {
		return sr, fmt.Errorf("chain starts with %s, not the vendor certificate", chain[0].Subject)
	}
	if len(chain) < 2 || !chain[1].Equal(s.ca.Cert) {
		return sr, fmt.Errorf("chain lacks the vendor's CA after the vendor certificate")
	}
	data, _ := outer["PushCertRequestPlist"].([]byte)
	inner, ok := bytes.CutSuffix(data, []byte("\n"))
	if !ok {
		return sr, fmt.Errorf("PushCertRequestPlist does not end in a newline")
	}
	sig, _ := outer["PushCertSignature"].([]byte)
	sum := sha1.Sum(inner)
	if err := rsa.VerifyPKCS1v15(s.vendor.PublicKey.(*rsa.PublicKey), crypto.SHA1, sum[:], sig); err != nil {
		return sr, fmt.Errorf("PushCertSignature: %v", err)
	}
	if outer["PushCertSignedRequest"] != true {
		return sr, fmt.Errorf("PushCertSignedRequest is %v", outer["PushCertSignedRequest"])
	}

	v, err = decodePlist(inner)
	if err != nil {
		return sr, fmt.Errorf("inner plist: %v", err)
	}
	in, _ := v.(map[string]any)
	header, _ := in["Header"].(map[string]any)
	for k, want := range map[string]string{"ClientApplicationCredential": "1", "ClientApplicationName": "XServer",
		"ClientIPAddress": "1", "ClientOSName": "MAC OSX", "ClientOSVersion": "2.1", "LanguagePreference": "1",
		"TransactionId": "1", "Version": "1"} {
		if header[k] != want {
			return sr, fmt.Errorf("Header %s = %v", k, header[k])
		}
	}
	r, _ := in["Request"].(map[string]any)
	if r["ProfileType"] != "Production" || r["RequesterType"] != "XServer" {
		return sr, fmt.Errorf("ProfileType %v, RequesterType %v", r["ProfileType"], r["RequesterType"])
	}
	user, _ := r["User"].(map[string]any)
	if user["AccountName"] != s.account || user["PasswordHash"] != s.hash {
		return sr, fmt.Errorf("User %v", user)
	}
	list, _ := r["CertRequestList"].([]any)
	if len(list) != 5 {
		return sr, fmt.Errorf("%d CertRequestList entries", len(list))
	}
	for i, e := range list {
		d, _ := e.(map[string]any)
		no, ok := d["CertRequestNo"].(int64)
		if !ok || no != int64(i) {
			return sr, fmt.Errorf("entry %d: CertRequestNo %v", i, d["CertRequestNo"])
		}
		svc := services[no]
		if d["ServiceType"] != svc.ServiceType || d["Description"] != testHost+" - apns:"+svc.Apns {
			return sr, fmt.Errorf("entry %d: ServiceType %v, Description %v", i, d["ServiceType"], d["Description"])
		}
		csrPEM, _ := d["CSR"].(string)
		b, _ := pem.Decode([]byte(csrPEM))
		if b == nil || b.Type != "CERTIFICATE REQUEST" {
			return sr, fmt.Errorf("entry %d: CSR is not PEM", i)
		}
		csr, err := x509.ParseCertificateRequest(b.Bytes)
		if err != nil {
			return sr, fmt.Errorf("entry %d: %v", i, err)
		}
		if err := csr.CheckSignature(); err != nil {
			return sr, fmt.Errorf("entry %d: CSR signature: %v", i, err)
		}
		if csr.SignatureAlgorithm != x509.SHA1WithRSA {
			return sr, fmt.Errorf("entry %d: CSR signed with %v", i, csr.SignatureAlgorithm)
		}
		if csr.Subject.String() != "CN="+svc.CommonName+",C=US" || len(csr.Extensions) != 0 || len(csr.Attributes) != 0 {
			return sr, fmt.Errorf("entry %d: subject %s, %d extensions", i, csr.Subject, len(csr.Extensions))
		}
		pub, ok := csr.PublicKey.(*rsa.PublicKey)
		if !ok || pub.N.BitLen() != 2048 {
			return sr, fmt.Errorf("entry %d: key is not RSA-2048", i)
		}
		for _, other := range sr.Keys {
			if other.Equal(pub) {
				return sr, fmt.Errorf("entry %d: same key as another service", i)
			}
		}
		sr.Keys[i] = pub
		serial, hasSerial := d["CertificateSerialNumber"].(string)
		switch {
		case kind == "new" && hasSerial:
			return sr, fmt.Errorf("entry %d: serial on /new", i)
		case hasSerial:
			s.mu.Lock()
			prev := s.issued[serial]
			s.mu.Unlock()
			if prev == nil || !prev.PublicKey.(*rsa.PublicKey).Equal(pub) {
				return sr, fmt.Errorf("entry %d: serial %s is not a certificate issued for this key", i, serial)
			}
			sr.Serials[i] = serial
		}
	}
	return sr, nil
}

// issue signs a certificate for one service, valid for a year from the
// stand-in's clock. A renewal keeps the topic of the certificate it
// replaces; a new one gets a fresh UUID topic.
func (s *appleStub) issue(no int, pub *rsa.PublicKey, oldSerial string) (*x509.Certificate, error) {
	now := s.now()
	return s.issueUntil(no, pub, oldSerial, now.Add(-time.Hour), now.AddDate(1, 0, 0))
}

func (s *appleStub) issueUntil(no int, pub *rsa.PublicKey, oldSerial string, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	svc := services[no]
	topic := fmt.Sprintf("%s.XServer.%s", svc.Apns, newUUID())
	s.mu.Lock()
	if prev := s.issued[oldSerial]; prev != nil {
		topic = testpki.SubjectUID(prev)
	}
	s.mu.Unlock()
	subject, err := asn1.Marshal(pkix.RDNSequence{
		{{Type: testpki.OIDUID, Value: topic}},
		{{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "APSP:" + topic}},
		{{Type: asn1.ObjectIdentifier{2, 5, 4, 6}, Value: "US"}},
	})
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(1)),
		RawSubject:   subject,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca.Cert, pub, s.ca.Key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.issued[cert.SerialNumber.Text(16)] = cert
	s.mu.Unlock()
	return cert, nil
}

func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%X-%X-%X-%X-%X", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// stubAnswer writes the success answer the way Apple's servers format
// plists, in reverse CertRequestNo order so that mapping by position
// would pick the wrong certificate.
func stubAnswer(issued map[int]*x509.Certificate) []byte {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Response</key>
  <dict>
    <key>Certificates</key>
    <array>
`)
	for no := len(services) - 1; no >= 0; no-- {
		c, ok := issued[no]
		if !ok {
			continue
		}
		svc := services[no]
		fmt.Fprintf(&b, `      <dict>
        <key>Description</key><string>%s - apns:%s</string>
        <key>ServiceType</key>
        <string>%s</string>
        <key>Certificate</key>
        <string>%s</string>
        <key>CertRequestNo</key>
        <integer>%d</integer>
      </dict>
`, testHost, svc.Apns, svc.ServiceType, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), no)
	}
	b.WriteString(`    </array>
    <key>Status</key>
    <dict>
      <key>ErrorCode</key>
      <integer>0</integer>
      <key>ErrorDescription</key>
      <string></string>
      <key>ErrorMessage</key>
      <string></string>
    </dict>
  </dict>
  <key>Header</key>
  <dict>
    <key>ClientApplicationName</key>
    <string>XServer</string>
    <key>TransactionId</key>
    <string>1</string>
  </dict>
</dict>
</plist>
`)
	return []byte(b.String())
}

// discontinuedAnswer is Apple's answer since 2024-10-29 (docs/protocol.md#apple-cert-status).
const discontinuedAnswer = `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>Header</key>
	<dict>
		<key>TransactionId</key>
		<string>1</string>
	</dict>
	<key>Response</key>
	<dict>
		<key>Status</key>
		<dict>
			<key>ErrorCode</key>
			<integer>-80010</integer>
			<key>ErrorDescription</key>
			<string>ServiceType is Invalid.</string>
			<key>ErrorMessage</key>
			<string>ServiceType is Invalid.</string>
		</dict>
	</dict>
</dict>
</plist>
`
