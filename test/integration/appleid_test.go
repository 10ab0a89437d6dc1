package integration

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
	"github.com/xapsd/xapsd/internal/testutil/fakeapns"
	"github.com/xapsd/xapsd/internal/testutil/testpki"
)

// legacyAppleCerts builds the "AppleCerts" object an old xapsd kept in its
// database.json (docs/protocol.md#legacy-applecerts) with the mail certificate (index 2) for topic.
func legacyAppleCerts(t *testing.T, topic string) json.RawMessage {
	t.Helper()
	ca, err := testpki.NewCA("legacy Apple CA")
	if err != nil {
		t.Fatal(err)
	}
	type tlsCert struct {
		Certificate                  []string
		PrivateKey                   any
		SupportedSignatureAlgorithms any
		OCSPStaple                   any
		SignedCertificateTimestamps  any
		Leaf                         any
	}
	var sigs []tlsCert
	var keys []string
	for i, svc := range []string{"calendar", "contact", "mail", "mgmt", "alerts"} {
		uid := fmt.Sprintf("com.apple.%s.XServer.test-%d", svc, i)
		if svc == "mail" {
			uid = topic
		}
		leaf, err := ca.Issue(testpki.IssueOptions{UID: uid, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(200 * 24 * time.Hour), IsClient: true})
		if err != nil {
			t.Fatal(err)
		}
		sigs = append(sigs, tlsCert{Certificate: []string{base64.StdEncoding.EncodeToString(leaf.Cert.Raw)}})
		keys = append(keys, base64.StdEncoding.EncodeToString(x509.MarshalPKCS1PrivateKey(leaf.Key.(*rsa.PrivateKey))))
	}
	b, err := json.Marshal(map[string]any{"Signature": sigs, "Keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// An install of the old Apple-ID-era xapsd keeps its certificate: the
// AppleCerts in database.json are imported at the first start and pushes
// use them, without asking Apple.
func TestOldInstallKeepsItsAppleCertificate(t *testing.T) {
	srv, err := fakeapns.Start(fakeapns.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dir := testutil.TempDir(t)
	caFile := filepath.Join(dir, "apns-ca.pem")
	srv.WriteCAFile(caFile)
	os.MkdirAll(filepath.Join(dir, "state"), 0o700)
	db := fmt.Sprintf(`{"AppleCerts": %s, "Users": {"alice": {"Accounts": {"%s": {"DeviceToken": "%s", "Mailboxes": ["INBOX"], "RegistrationTime": "%s"}}}}}`,
		legacyAppleCerts(t, topicA), acc, token(3), time.Now().Format(time.RFC3339Nano))
	os.WriteFile(filepath.Join(dir, "state", "database.json"), []byte(db), 0o644)
	addr := writeConfig(t, dir, fmt.Sprintf("apnsEndpoint: %s\nappleId: admin@example.com\nappleIdHashedPassword: %s\n", srv.URL, strings.Repeat("0a", 32)))
	d := startDaemon(t, dir, addr, "SSL_CERT_FILE="+caFile)

	if status, body := post(t, addr, "/register", registerBody("bob", "ACC-B", token(4))); status != 200 || body != topicA {
		t.Fatalf("register = %d %q, want the imported certificate's topic", status, body)
	}
	post(t, addr, "/notify", notifyBody("alice", "INBOX", "MessageNew"))
	reqs, err := srv.WaitRequests(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if reqs[0].ClientCertSubjectUID != topicA || reqs[0].Token != token(3) {
		t.Errorf("push %+v, want the migrated device with the imported certificate", reqs[0])
	}
	st, err := os.Stat(filepath.Join(dir, "state", "apple-push", "mail.pem"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("imported mail certificate: %v %v", err, st)
	}
	if !d.waitLog("imported the old xapsd's Apple push certificates", time.Second) {
		t.Error("import not logged")
	}
	if d.stop() != 0 {
		t.Error("non-zero exit")
	}
	// The next start finds the certificate in the state folder.
	d = startDaemon(t, dir, addr, "SSL_CERT_FILE="+caFile)
	if _, body := post(t, addr, "/register", registerBody("bob", "ACC-B", token(4))); body != topicA {
		t.Errorf("after restart the topic is %q", body)
	}
	// The expiry date to plan for (docs/migrating.md): in the start-up line
	// and in --check-config, the same.
	d.waitLog("xapsd is running", 5*time.Second)
	started := fields(logLine(t, d.log.String(), `msg="xapsd is running"`))
	code, out, errOut := run(t, "", "--config", filepath.Join(dir, "xapsd.yaml"), "--check-config")
	checked := fields(out)
	if code != 0 || !strings.HasPrefix(started["expires"], `"20`) || checked["expires"] != started["expires"] ||
		started["topic"] != topicA || checked["topic"] != topicA || !strings.Contains(started["credential"], "Apple ID certificate") {
		t.Errorf("expiry of the imported certificate: start-up line %v, --check-config (%d) %v %s", started, code, checked, errOut)
	}
}

// With an Apple ID but no certificate and no vendor identity, xapsd keeps
// running and says why devices cannot register.
func TestAppleIDWithoutCertificateExplainsAndKeepsRunning(t *testing.T) {
	dir := testutil.TempDir(t)
	addr := writeConfig(t, dir, fmt.Sprintf("appleId: admin@example.com\nappleIdHashedPassword: %s\n", strings.Repeat("0a", 32)))
	d := startDaemon(t, dir, addr)
	status, body := post(t, addr, "/register", registerBody("bob", "ACC-B", token(4)))
	// The plugin is told what, without the server's paths; the log says why.
	if status != 503 || !strings.Contains(body, "no usable push credential") || strings.Contains(body, dir) {
		t.Errorf("register = %d %q, want 503 naming the problem without paths", status, body)
	}
	if !d.waitLog("refusing a registration: no usable push credential", 5*time.Second) || !strings.Contains(d.log.String(), "no Apple push certificate") {
		t.Error("the log does not say why the registration was refused")
	}
	resp, err := client.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("/healthz = %d, want 503", resp.StatusCode)
	}
	if status, _ := post(t, addr, "/notify", notifyBody("bob", "INBOX", "MessageNew")); status != 404 {
		t.Errorf("notify still served? status %d", status)
	}
	if d.stop() != 0 {
		t.Error("non-zero exit")
	}
}
