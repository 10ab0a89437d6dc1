package daemon_test

import (
	"github.com/xapsd/xapsd/internal/testutil/xapsdtest"
)

// What the daemon's tests share, written once in xapsdtest.
const (
	topicA = xapsdtest.TopicA
	topicB = xapsdtest.TopicB
	acc    = xapsdtest.Acc
)

var (
	writeConfig  = xapsdtest.WriteConfig
	post         = xapsdtest.Post
	get          = xapsdtest.Get
	registerBody = xapsdtest.RegisterBody
	notifyBody   = xapsdtest.NotifyBody
	token        = xapsdtest.Token
	perToken     = xapsdtest.PerToken
	logLine      = xapsdtest.LogLine
	grepLines    = xapsdtest.GrepLines
	mustRead     = xapsdtest.MustRead
)

const pluginSecret = xapsdtest.PluginSecret

// exitCode is the exit code of `xapsd` for the error Run returned.
func exitCode(err error) int {
	if err != nil {
		return 1
	}
	return 0
}
