package integration

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/filestore"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/statedir"
	"github.com/xapsd/xapsd/internal/testutil"
)

// TestKill9LosesNothingAcknowledged registers devices from many clients
// while killing the daemon with SIGKILL at random moments, then checks
// that every registration that got its 200 is on disk.
func TestKill9LosesNothingAcknowledged(t *testing.T) {
	dir := testutil.TempDir(t)
	// A tiny compaction threshold so that kills also land inside
	// snapshot writes and segment rotations.
	addr := writeConfig(t, dir, "apnsEndpoint: dry-run\nloglevel: warn\nregistryCompactAfter: 50\n")
	var mu sync.Mutex
	acked := map[registry.Key]bool{}
	hc := &http.Client{Timeout: 5 * time.Second}
	const rounds, workers = 6, 16
	for round := range rounds {
		d := startDaemon(t, dir, addr)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					k := registry.Key{User: fmt.Sprintf("r%d-w%d-%d@example.com", round, w, i),
						AccountID: fmt.Sprintf("ACC-%d-%d-%d", round, w, i), DeviceToken: token(round*1_000_000 + w*10_000 + i)}
					resp, err := hc.Post("http://"+addr+"/register", "application/json",
						strings.NewReader(registerBody(k.User, k.AccountID, k.DeviceToken)))
					if err != nil {
						return // the daemon died under us
					}
					resp.Body.Close()
					if resp.StatusCode == 200 {
						mu.Lock()
						acked[k] = true
						mu.Unlock()
					}
				}
			}()
		}
		time.Sleep(time.Duration(150+rand.IntN(400)) * time.Millisecond)
		d.kill()
		close(stop)
		wg.Wait()
	}
	if len(acked) < rounds*workers {
		t.Fatalf("only %d registrations acknowledged; the test did not exercise the daemon", len(acked))
	}
	files := filestore.New(filestore.Options{Dir: statedir.New(filepath.Join(dir, "state", "database.json"))})
	r, err := registry.Open(files, registry.Options{MaxDevicesPerUser: 1000})
	if err != nil {
		t.Fatalf("open the registry the daemon left: %v", err)
	}
	defer r.Close()
	have := map[registry.Key]bool{}
	for _, g := range r.List("") {
		have[g.Key] = true
	}
	lost := 0
	for k := range acked {
		if !have[k] {
			lost++
			if lost < 5 {
				t.Errorf("acknowledged registration lost: %+v", k)
			}
		}
	}
	t.Logf("%d registrations acknowledged over %d SIGKILLs, %d on disk, %d lost", len(acked), rounds, len(have), lost)
	if lost > 0 {
		t.Fatalf("%d acknowledged registrations lost", lost)
	}
}
