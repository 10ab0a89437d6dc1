package appleid

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
)

func testRequests(t *testing.T, serial *big.Int) []certRequest {
	t.Helper()
	fx := getFixture(t)
	var reqs []certRequest
	for i, s := range services {
		r := certRequest{Service: s, Key: fx.keys[i]}
		if s.No == mailNo {
			r.Serial = serial
		}
		reqs = append(reqs, r)
	}
	return reqs
}

func TestInnerPlist(t *testing.T) {
	serial, _ := new(big.Int).SetString("0A1B2C3D4E5F", 16)
	inner, err := innerPlist(testRequests(t, serial), "host.example", "a@example.com", strings.ToUpper(testHash))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(inner, []byte("</plist>")) {
		t.Errorf("inner plist ends %q", inner[len(inner)-10:])
	}
	v, err := decodePlist(inner)
	if err != nil {
		t.Fatal(err)
	}
	req := v.(map[string]any)["Request"].(map[string]any)
	if pw := req["User"].(map[string]any)["PasswordHash"]; pw != testHash {
		t.Errorf("PasswordHash %v, want it in lower case", pw)
	}
	list := req["CertRequestList"].([]any)
	for i, e := range list {
		d := e.(map[string]any)
		sn, has := d["CertificateSerialNumber"]
		switch {
		case i == mailNo && sn != "a1b2c3d4e5f":
			t.Errorf("serial %v, want lower-case hex without leading zero", sn)
		case i != mailNo && has:
			t.Errorf("entry %d: serial without a certificate to renew", i)
		}
		if d["Description"] != "host.example - apns:"+services[i].Apns {
			t.Errorf("entry %d: Description %v", i, d["Description"])
		}
		b, _ := pem.Decode([]byte(d["CSR"].(string)))
		csr, err := x509.ParseCertificateRequest(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		// Go ≥ 1.24 still makes and checks SHA-1 CSRs (docs/protocol.md#apple-cert-csr).
		if csr.SignatureAlgorithm != x509.SHA1WithRSA || csr.CheckSignature() != nil {
			t.Errorf("entry %d: %v, %v", i, csr.SignatureAlgorithm, csr.CheckSignature())
		}
		if !csr.PublicKey.(*rsa.PublicKey).Equal(&getFixture(t).keys[i].PublicKey) {
			t.Errorf("entry %d: CSR for the wrong key", i)
		}
		// C before CN in the DER, as Go writes it.
		if got := fmt.Sprint(csr.Subject.Names); got != fmt.Sprintf("[{2.5.4.6 US} {2.5.4.3 %s}]", services[i].CommonName) {
			t.Errorf("entry %d: subject %s", i, got)
		}
	}
	if !strings.Contains(string(inner), "<string>-----BEGIN CERTIFICATE REQUEST-----\n") {
		t.Error("CSR PEM is not written as literal text")
	}
}

func TestOuterPlist(t *testing.T) {
	fx := getFixture(t)
	v, err := parseVendor(fx.vendor.ChainPEM(), fx.vendor.KeyPEM(), "v.pem", "v.key")
	if err != nil {
		t.Fatal(err)
	}
	inner, err := innerPlist(testRequests(t, nil), "h", "a@b", testHash)
	if err != nil {
		t.Fatal(err)
	}
	outer, err := outerPlist(inner, v)
	if err != nil {
		t.Fatal(err)
	}
	d, err := decodePlist(outer)
	if err != nil {
		t.Fatal(err)
	}
	m := d.(map[string]any)
	if want := append(append([]byte{}, inner...), '\n'); !bytes.Equal(m["PushCertRequestPlist"].([]byte), want) {
		t.Error("PushCertRequestPlist is not the inner plist plus a newline")
	}
	if want := append(append([]byte{}, fx.vendor.Cert.Raw...), fx.ca.Cert.Raw...); !bytes.Equal(m["PushCertCertificateChain"].([]byte), want) {
		t.Error("PushCertCertificateChain is not the DER concatenation of the vendor chain")
	}
	sum := sha1.Sum(inner)
	if err := rsa.VerifyPKCS1v15(fx.vendor.Cert.PublicKey.(*rsa.PublicKey), crypto.SHA1, sum[:], m["PushCertSignature"].([]byte)); err != nil {
		t.Errorf("signature over the inner bytes: %v", err)
	}
	if m["PushCertSignedRequest"] != true || len(m) != 4 {
		t.Errorf("outer plist %v", m)
	}
}

func TestParseAnswer(t *testing.T) {
	e := newEnv(t, stubNormal)
	fx := getFixture(t)
	issued := map[int]*x509.Certificate{}
	for i := range services {
		c, err := e.stub.issue(i, &fx.keys[i].PublicKey, "")
		if err != nil {
			t.Fatal(err)
		}
		issued[i] = c
	}
	// stubAnswer lists them in reverse: position 0 holds CertRequestNo 4.
	certs, problems, err := parseAnswer(stubAnswer(issued))
	if err != nil || len(problems) != 0 || len(certs) != 5 {
		t.Fatalf("%d certificates, %q, %v", len(certs), problems, err)
	}
	for no, c := range certs {
		if c.No != no || !c.Cert.Equal(issued[no]) || c.ServiceType != services[no].ServiceType {
			t.Errorf("CertRequestNo %d mapped to %s", no, c.ServiceType)
		}
	}

	pemOf := func(no int) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: issued[no].Raw}))
	}
	wrap := func(status, certs string) []byte {
		return []byte(`<plist><dict><key>Response</key><dict>` + status + `<key>Certificates</key><array>` + certs + `</array></dict></dict></plist>`)
	}
	entry := func(fields string) string { return "<dict>" + fields + "</dict>" }

	// No CertRequestNo: the ServiceType tells; a string number is read;
	// DER in <data> works; broken entries are problems, not failures.
	body := wrap(`<key>Status</key><dict><key>ErrorCode</key><string>0</string></dict>`,
		entry(`<key>ServiceType</key><string>Service_Mail</string><key>Certificate</key><string>`+pemOf(2)+`</string>`)+
			entry(`<key>CertRequestNo</key><string>1</string><key>Certificate</key><data>`+
				base64.StdEncoding.EncodeToString(issued[1].Raw)+`</data>`)+
			entry(`<key>CertRequestNo</key><integer>7</integer><key>Certificate</key><string>`+pemOf(3)+`</string>`)+
			entry(`<key>CertRequestNo</key><integer>0</integer><key>Certificate</key><string>garbage</string>`)+
			entry(`<key>CertRequestNo</key><integer>2</integer><key>Certificate</key><string>`+pemOf(2)+`</string>`)+
			entry(`<key>ServiceType</key><string>Service_Unknown</string>`)+
			`<string>not a dict</string>`)
	certs, problems, err = parseAnswer(body)
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 2 || !certs[2].Cert.Equal(issued[2]) || !certs[1].Cert.Equal(issued[1]) {
		t.Errorf("certificates %v", certs)
	}
	for i, want := range []string{"#3 of the answer: CertRequestNo 7", "#4 of the answer: CertRequestNo 0", "#5 of the answer: CertRequestNo 2 given twice",
		"#6 of the answer: no CertRequestNo", "#7 of the answer: a string, not a dict"} {
		if i >= len(problems) || !strings.Contains(problems[i], want) {
			t.Errorf("problem %d: %q, want %q", i, problems, want)
		}
	}

	// Status and Certificates at the top level are found too.
	top := []byte(`<plist><dict><key>Status</key><dict><key>ErrorCode</key><integer>0</integer></dict><key>Certificates</key><array>` +
		entry(`<key>CertRequestNo</key><integer>2</integer><key>Certificate</key><string>`+pemOf(2)+`</string>`) + `</array></dict></plist>`)
	if certs, _, err := parseAnswer(top); err != nil || len(certs) != 1 {
		t.Errorf("top-level layout: %v, %v", certs, err)
	}
}

func TestParseAnswerErrors(t *testing.T) {
	_, _, err := parseAnswer([]byte(discontinuedAnswer))
	var se *ServiceError
	if !errors.As(err, &se) || se.Code != -80010 || !errors.Is(err, ErrDiscontinued) {
		t.Fatalf("-80010: %v", err)
	}
	for _, s := range []string{"-80010", "ServiceType is Invalid.", "2024-10-29", "certificateFilePem", "certificateFileP12",
		"keyFileP8", "com.apple.mobilemail.push.*", "com.apple.mail.*", "docs/credentials.md", "keeps working until it expires"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("-80010 message lacks %q", s)
		}
	}
	// Message and description are given once when Apple repeats itself.
	if strings.Count(err.Error(), "ServiceType is Invalid.") != 1 {
		t.Errorf("message repeated: %v", err)
	}

	other := `<plist><dict><key>Response</key><dict><key>Status</key><dict><key>ErrorCode</key><integer>-80002</integer>` +
		`<key>ErrorMessage</key><string>Authentication failed.</string><key>ErrorDescription</key><string>Bad password.</string></dict></dict></dict></plist>`
	_, _, err = parseAnswer([]byte(other))
	if err == nil || errors.Is(err, ErrDiscontinued) || err.Error() != "Apple's push certificate service answered error -80002: Authentication failed. Bad password." {
		t.Errorf("other error: %v", err)
	}
	if err := (&ServiceError{Code: 5}).Error(); err != "Apple's push certificate service answered error 5: no message" {
		t.Errorf("empty error: %s", err)
	}

	for in, want := range map[string]string{
		"not xml":                 "malformed",
		"<plist><array/></plist>": "top level is an array",
		"<plist><dict/></plist>":  "no error code and no Certificates",
		`<plist><dict><key>Status</key><dict><key>ErrorCode</key><true/></dict></dict></plist>`: "ErrorCode is a boolean",
		`<plist><dict><key>Certificates</key><string>x</string></dict></plist>`:                 "no error code and no Certificates",
	} {
		if _, _, err := parseAnswer([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}
