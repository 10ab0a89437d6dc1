package creds

import (
	"fmt"
	"strings"
)

// MailTopicPrefixes are the topics iOS Mail listens to: the mail push
// certificates of macOS Server (com.apple.mail.XServer.<uuid>) and the
// topics Apple enables for a team's mail push
// (com.apple.mobilemail.push.<domain>), see docs/credentials.md. A push to
// an app's bundle ID or an MDM topic is accepted by APNs and never wakes
// Mail, so nothing but this warning would tell.
var MailTopicPrefixes = []string{"com.apple.mail.", "com.apple.mobilemail.push."}

// MailTopicWarning says why iOS Mail will not wake for topic, or "".
func MailTopicWarning(topic string) string {
	for _, p := range MailTopicPrefixes {
		if strings.HasPrefix(topic, p) {
			return ""
		}
	}
	return fmt.Sprintf("topic %q is not one iOS Mail listens to: Mail accepts only topics that start with %s; "+
		"APNs accepts pushes for it, but they never wake Mail",
		topic, strings.Join(MailTopicPrefixes, " or "))
}
