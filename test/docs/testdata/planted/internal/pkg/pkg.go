// Package pkg does things (spec §4.6).
package pkg

// modified UTF-7 is RFC 3501 §5.1.3; INBOX is RFC 3501
// §5.1, across a line break.
// The reply is in docs/guide.md#the-reply-aps-topic-and-more; docs/gone.md is not.
// As the spec says.
// The loader is in internal/pkg/pkg.go; the parser was in internal/pkg/gone.go.
var path = "internal/not-checked-outside-comments.go"
