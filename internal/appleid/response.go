package appleid

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// codeDiscontinued is the answer Apple has given to every request since
// 2024-10-29, with ErrorMessage "ServiceType is Invalid." (docs/protocol.md#apple-cert-status).
const codeDiscontinued = -80010

// ErrDiscontinued matches (errors.Is) the service's -80010 answer.
var ErrDiscontinued = errors.New("Apple's push certificate service no longer issues certificates (-80010)")

// ServiceError is an answer from the certificate service with a non-zero
// ErrorCode.
type ServiceError struct {
	Code        int64
	Message     string
	Description string
}

func (e *ServiceError) Error() string {
	what := strings.TrimSpace(e.Message)
	if d := strings.TrimSpace(e.Description); d != "" && d != what {
		if what != "" {
			what += " "
		}
		what += d
	}
	if e.Code == codeDiscontinued {
		// One message that says all an administrator needs (issue 4).
		return fmt.Sprintf("Apple's push certificate service answered error %d (%q): Apple stopped issuing and renewing "+
			"macOS Server push certificates on 2024-10-29, so appleId cannot get or renew a certificate any more. "+
			"A certificate you already have keeps working until it expires. To keep push working, configure a mail push "+
			"certificate file (certificateFilePem/certificateFilePemKey, or certificateFileP12), or an APNs auth key "+
			"(keyFileP8 with keyFileKeyId, keyFileTeamId and a keyFileTopic of com.apple.mobilemail.push.* or "+
			"com.apple.mail.*); see docs/credentials.md", e.Code, what)
	}
	if what == "" {
		what = "no message"
	}
	return fmt.Sprintf("Apple's push certificate service answered error %d: %s", e.Code, what)
}

// Is makes errors.Is(err, ErrDiscontinued) true for the -80010 answer.
func (e *ServiceError) Is(target error) bool {
	return target == ErrDiscontinued && e.Code == codeDiscontinued
}

// issued is one certificate of an answer.
type issued struct {
	No          int
	ServiceType string
	Cert        *x509.Certificate
}

// parseAnswer reads the service's plist answer (docs/protocol.md#apple-cert-answer). It returns
// the certificates keyed by CertRequestNo; entries it cannot read are
// reported in problems, so one broken calendar certificate does not cost
// the mail one.
func parseAnswer(body []byte) (certs map[int]issued, problems []string, err error) {
	v, err := decodePlist(body)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate service answer: %w", err)
	}
	top, ok := v.(map[string]any)
	if !ok {
		return nil, nil, fmt.Errorf("certificate service answer: top level is %s, not a dict", plistType(v))
	}
	// Status and Certificates sit in Response; tolerate them at the top
	// level too, which costs nothing.
	resp, _ := top["Response"].(map[string]any)
	lookup := func(k string) any {
		if resp != nil {
			if x, ok := resp[k]; ok {
				return x
			}
		}
		return top[k]
	}
	if st, ok := lookup("Status").(map[string]any); ok {
		code, ok := plistInt(st["ErrorCode"])
		if !ok && st["ErrorCode"] != nil {
			return nil, nil, fmt.Errorf("certificate service answer: ErrorCode is %s", plistType(st["ErrorCode"]))
		}
		if code != 0 {
			msg, _ := st["ErrorMessage"].(string)
			desc, _ := st["ErrorDescription"].(string)
			return nil, nil, &ServiceError{Code: code, Message: msg, Description: desc}
		}
	}
	list, ok := lookup("Certificates").([]any)
	if !ok {
		return nil, nil, errors.New("certificate service answer has no error code and no Certificates")
	}
	certs = map[int]issued{}
	for i, e := range list {
		c, err := parseIssued(e)
		if err != nil {
			problems = append(problems, fmt.Sprintf("certificate #%d of the answer: %v", i+1, err))
			continue
		}
		if _, dup := certs[c.No]; dup {
			problems = append(problems, fmt.Sprintf("certificate #%d of the answer: CertRequestNo %d given twice; the first is kept", i+1, c.No))
			continue
		}
		certs[c.No] = c
	}
	return certs, problems, nil
}

func parseIssued(e any) (issued, error) {
	d, ok := e.(map[string]any)
	if !ok {
		return issued{}, fmt.Errorf("%s, not a dict", plistType(e))
	}
	st, _ := d["ServiceType"].(string)
	no, ok := plistInt(d["CertRequestNo"])
	if !ok {
		// Without a number the service type still says which it is.
		no = -1
		for _, s := range services {
			if s.ServiceType == st {
				no = int64(s.No)
			}
		}
		if no < 0 {
			return issued{}, errors.New("no CertRequestNo and no known ServiceType")
		}
	}
	if no < 0 || no >= int64(len(services)) {
		return issued{}, fmt.Errorf("CertRequestNo %d is not one xapsd asked for", no)
	}
	var raw []byte
	switch c := d["Certificate"].(type) {
	case string:
		raw = []byte(c)
	case []byte:
		raw = c
	default:
		return issued{}, fmt.Errorf("CertRequestNo %d: Certificate is %s", no, plistType(d["Certificate"]))
	}
	der := raw
	for rest := raw; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			der = b.Bytes
			break
		}
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return issued{}, fmt.Errorf("CertRequestNo %d: %w", no, err)
	}
	return issued{No: int(no), ServiceType: st, Cert: cert}, nil
}

// plistInt reads an integer that may have come as <integer> or as a
// numeric <string>.
func plistInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case string:
		n, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64)
		return n, err == nil
	}
	return 0, false
}

func plistType(v any) string {
	switch v.(type) {
	case nil:
		return "missing"
	case map[string]any:
		return "a dict"
	case []any:
		return "an array"
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a real"
	case bool:
		return "a boolean"
	case []byte:
		return "data"
	}
	return fmt.Sprintf("%T", v)
}
