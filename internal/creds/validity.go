package creds

import (
	"fmt"
	"time"
)

// ValidityError is a certificate that is well-formed but outside its
// validity period (ErrExpired or ErrNotYetValid). It keeps what the
// certificate says, so that a daemon that starts without it can still
// name its topic and expiry.
type ValidityError struct {
	Path      string
	Topic     string
	NotBefore time.Time
	NotAfter  time.Time
	Err       error // ErrExpired or ErrNotYetValid
}

func (e *ValidityError) Error() string {
	if e.Err == ErrNotYetValid {
		return fmt.Sprintf("certificate %s (topic %s): %v (valid from %s)", e.Path, e.Topic, e.Err, e.NotBefore.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("certificate %s (topic %s): %v (on %s)", e.Path, e.Topic, e.Err, e.NotAfter.UTC().Format(time.RFC3339))
}

func (e *ValidityError) Unwrap() error { return e.Err }
