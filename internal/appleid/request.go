package appleid

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"

	"github.com/xapsd/xapsd/internal/applecerts"
)

// The five certificates macOS Server asks for, and the one pushes use,
// are applecerts' (docs/protocol.md#apple-cert-services).
type service = applecerts.Service

var services = applecerts.Services

const mailNo = applecerts.MailNo

// rsaBits is the key size macOS Server used for each service key.
const rsaBits = 2048

// certRequest is what goes into one CertRequestList entry.
type certRequest struct {
	Service service
	Key     *rsa.PrivateKey
	// Serial is the serial number of the certificate held now for this
	// service, on renewals; nil on /new or when none is held.
	Serial *big.Int
}

// makeCSR builds the PKCS#10 request for one service: subject C=US plus
// the service's CN, signed with SHA-1 as macOS Server did. Go
// 1.26 still creates SHA-1 requests; only verifying SHA-1 certificate
// chains was dropped.
func makeCSR(s service, key *rsa.PrivateKey) ([]byte, error) {
	tmpl := &x509.CertificateRequest{
		Subject:            pkix.Name{Country: []string{"US"}, CommonName: s.CommonName},
		SignatureAlgorithm: x509.SHA1WithRSA,
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("create %s certificate request: %w", s.Name, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// requestHeader is the fixed Header dict macOS Server sent; the service
// checks that it is there, not what it says.
func requestHeader() map[string]any {
	return map[string]any{
		"ClientApplicationCredential": "1",
		"ClientApplicationName":       "XServer",
		"ClientIPAddress":             "1",
		"ClientOSName":                "MAC OSX",
		"ClientOSVersion":             "2.1",
		"LanguagePreference":          "1",
		"TransactionId":               "1",
		"Version":                     "1",
	}
}

// innerPlist builds the request proper: Header plus the five
// CertRequestList entries and the account.
func innerPlist(reqs []certRequest, hostname, appleID, passwordHash string) ([]byte, error) {
	list := make([]any, 0, len(reqs))
	for _, r := range reqs {
		csr, err := makeCSR(r.Service, r.Key)
		if err != nil {
			return nil, err
		}
		e := map[string]any{
			"CSR":           string(csr),
			"CertRequestNo": r.Service.No,
			"Description":   hostname + " - apns:" + r.Service.Apns,
			"ServiceType":   r.Service.ServiceType,
		}
		if r.Serial != nil {
			// Lower-case hex without leading zeros, as Go's big.Int
			// prints it and as the old daemon sent it.
			e["CertificateSerialNumber"] = r.Serial.Text(16)
		}
		list = append(list, e)
	}
	inner, err := encodePlist(map[string]any{
		"Header": requestHeader(),
		"Request": map[string]any{
			"CertRequestList": list,
			"ProfileType":     "Production",
			"RequesterType":   "XServer",
			"User": map[string]any{
				"AccountName": appleID,
				// The service compares lower-case hex; xapsd -pass prints
				// lower case but the config accepts either.
				"PasswordHash": strings.ToLower(passwordHash),
			},
		},
	})
	if err != nil {
		return nil, err
	}
	// The signed bytes end at </plist>; outerPlist adds the newline the
	// request carries after them.
	return bytes.TrimSuffix(inner, []byte("\n")), nil
}

// outerPlist wraps the inner request with the vendor chain and the SHA-1
// signature over exactly the inner bytes (docs/protocol.md#apple-cert-request).
func outerPlist(inner []byte, v *vendor) ([]byte, error) {
	sum := sha1.Sum(inner)
	sig, err := rsa.SignPKCS1v15(rand.Reader, v.key, crypto.SHA1, sum[:])
	if err != nil {
		return nil, fmt.Errorf("sign certificate request with the vendor key: %w", err)
	}
	var chain []byte
	for _, c := range v.chain {
		chain = append(chain, c.Raw...)
	}
	// The inner plist travels with a trailing newline that the signature
	// does not cover.
	body := append(append([]byte{}, inner...), '\n')
	return encodePlist(map[string]any{
		"PushCertCertificateChain": chain,
		"PushCertRequestPlist":     body,
		"PushCertSignature":        sig,
		"PushCertSignedRequest":    true,
	})
}
