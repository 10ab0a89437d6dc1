package creds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/sideshow/apns2/token"
)

// appleIDLen is the length of Apple's key and team identifiers.
const appleIDLen = 10

// loadToken sets up token authentication. Every problem is reported at
// once, so an admin fixes the configuration in one go.
func loadToken(f Files) (*Credential, error) {
	var errs []error
	if f.KeyID == "" {
		errs = append(errs, fmt.Errorf("auth key %s: key ID: %w", f.P8, ErrMissingSetting))
	}
	if f.TeamID == "" {
		errs = append(errs, fmt.Errorf("auth key %s: team ID: %w", f.P8, ErrMissingSetting))
	}
	switch {
	case f.Topic == "":
		errs = append(errs, fmt.Errorf("auth key %s: topic: %w (token mode has no certificate to take it from)", f.P8, ErrMissingSetting))
	case strings.IndexFunc(f.Topic, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		// It goes into the apns-topic header, where it would be refused
		// on every push.
		errs = append(errs, fmt.Errorf("auth key %s: topic %q contains spaces or control characters", f.P8, f.Topic))
	}
	var key *ecdsa.PrivateKey
	data, err := readFile("auth key", f.P8)
	if err == nil {
		key, err = authKey(data, f.P8)
	}
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	tok := &token.Token{AuthKey: key, KeyID: f.KeyID, TeamID: f.TeamID}
	// apns2 swallows signing errors and sends an empty bearer; signing
	// once here surfaces them at start.
	if _, err := tok.Generate(); err != nil {
		return nil, fmt.Errorf("auth key %s: sign a token: %w", f.P8, err)
	}
	cred := &Credential{Mode: ModeToken, Topic: f.Topic, Token: tok, Sources: []string{f.P8}}
	// Odd lengths are only warned about: Apple has used 10 characters so
	// far, but nothing promises it, and APNs will say so if it minds.
	if len(f.KeyID) != appleIDLen {
		cred.Warnings = append(cred.Warnings, fmt.Sprintf("key ID %q is %d characters; Apple's key IDs are %d", f.KeyID, len(f.KeyID), appleIDLen))
	}
	if len(f.TeamID) != appleIDLen {
		cred.Warnings = append(cred.Warnings, fmt.Sprintf("team ID %q is %d characters; Apple's team IDs are %d", f.TeamID, len(f.TeamID), appleIDLen))
	}
	cred.Warnings = append(cred.Warnings, topicWarnings(f.Topic)...)
	return cred, nil
}

// authKey parses a .p8 file: Apple issues EC P-256 keys in PKCS#8 PEM,
// and APNs signs with ES256, so nothing else will do.
func authKey(data []byte, path string) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("auth key %s: no PEM block: %w", path, ErrBadAuthKey)
	}
	if b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("auth key %s: PEM block is %q, want \"PRIVATE KEY\": %w", path, b.Type, ErrBadAuthKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("auth key %s: %w: %w", path, ErrBadAuthKey, err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("auth key %s: holds a %T: %w", path, k, ErrBadAuthKey)
	}
	if ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("auth key %s: curve %s: %w", path, ec.Curve.Params().Name, ErrBadAuthKey)
	}
	return ec, nil
}
