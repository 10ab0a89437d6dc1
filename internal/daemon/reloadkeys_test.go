package daemon

import (
	"slices"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/config"
)

func TestRestartKeysNameTheChangesAReloadCannotApply(t *testing.T) {
	a, b := config.Default(), config.Default()
	b.LogLevel, b.APNsEndpoint, b.ShutdownTimeout = "debug", config.EndpointDryRun, time.Minute // applied
	b.Port, b.Delay, b.ListenAddr, b.PushMailboxes = 1, time.Minute, "::1", "inbox"             // not applied
	if got, want := restartKeys(a, b), []string{"listenAddr", "port", "delay", "pushMailboxes"}; !slices.Equal(got, want) {
		t.Errorf("restartKeys = %v, want %v", got, want)
	}
}
