package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/filestore"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/statedir"
	"github.com/xapsd/xapsd/internal/testutil"
)

// A second xapsd on the same configuration, after someone deleted the
// lock file, stops at the port it cannot bind, before it opens the
// registry; the running daemon's journal stays whole.
func TestSecondDaemonStopsBeforeTheRegistry(t *testing.T) {
	dir := testutil.TempDir(t)
	addr := writeConfig(t, dir, "apnsEndpoint: dry-run\nloglevel: info\n")
	d := startDaemon(t, dir, addr)
	db := filepath.Join(dir, "state", "database.json")
	for i := range 10 {
		if status, _ := post(t, addr, "/register", registerBody(fmt.Sprintf("a%d@example.com", i), acc, token(i))); status != 200 {
			t.Fatalf("register: %d", status)
		}
	}
	segs, _ := filepath.Glob(db + ".journal.*")
	if err := os.Remove(db + ".lock"); err != nil {
		t.Fatal(err)
	}
	second := exec.Command(xapsdBin, "--config", filepath.Join(dir, "xapsd.yaml"))
	out, err := second.CombinedOutput()
	if err == nil {
		t.Fatalf("a second xapsd started on the same configuration:\n%s", out)
	}
	if !strings.Contains(string(out), "(listenAddr/port)") || strings.Contains(string(out), "registry loaded") {
		t.Errorf("the second xapsd did not stop at the port, before the registry:\n%s", out)
	}
	for _, s := range segs {
		if _, err := os.Stat(s); err != nil {
			t.Errorf("the running daemon's journal segment is gone: %v", err)
		}
	}
	for i := 10; i < 20; i++ {
		if status, _ := post(t, addr, "/register", registerBody(fmt.Sprintf("a%d@example.com", i), acc, token(i))); status != 200 {
			t.Fatalf("register after the second start: %d", status)
		}
	}
	d.kill()
	r, err := registry.Open(filestore.New(filestore.Options{Dir: statedir.New(db)}), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if u, _ := r.Stats(); u != 20 {
		t.Errorf("%d users on disk after kill -9, want the 20 acknowledged", u)
	}
}

// runWithin runs xapsd with args and returns its exit code and output; a
// run still going after limit is killed and reported as hung (-1).
func runWithin(t *testing.T, limit time.Duration, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(xapsdBin, args...)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
		return cmd.ProcessState.ExitCode(), out.String()
	case <-time.After(limit):
		cmd.Process.Kill()
		<-done
		return -1, out.String()
	}
}

// No file xapsd reads can hang it: a named pipe where a file should be is
// refused at once, with its path, by the start and by --check-config,
// instead of an open that waits for a writer forever (and a process that
// then only SIGKILL stops). Where a broken file does not stop the start (a
// credential, the pushes left over), the daemon starts and says why.
func TestNoFileTheDaemonReadsCanHangIt(t *testing.T) {
	const stops, starts = true, false
	for _, tc := range []struct {
		name   string
		config string // extra configuration lines
		fifo   string // relative to the configuration's folder
		start  bool   // stops: the start fails; starts: it runs and logs the path
		check  bool   // --check-config fails (else it warns, or passes)
	}{
		{"pluginSecretFile", "pluginSecretFile: plugin.secret\n", "plugin.secret", stops, true},
		{"database.json", "", "state/database.json", stops, true},
		{"a journal segment", "", "state/database.json.journal.00000000000000000001-1", stops, true},
		{"the lock file", "", "state/database.json.lock", stops, true},
		{"databasePasswordFile", "databaseURL: postgres://xapsd@127.0.0.1:1/xapsd\ndatabasePasswordFile: db.password\n", "db.password", stops, true},
		{"tlsCertfile", "tlsCertfile: tls.crt\ntlsKeyfile: tls.key\ntlsListenAddr: 127.0.0.1\ntlsPort: 1\n", "tls.crt", stops, false},
		{"certificateFilePem", "apnsEndpoint: production\ncertificateFilePem: push.pem\ncertificateFilePemKey: push.key\n", "push.pem", starts, false},
		{"pending-pushes.json", "", "state/pending-pushes.json", starts, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := testutil.TempDir(t)
			os.Mkdir(filepath.Join(dir, "state"), 0o700)
			extra := tc.config
			if !strings.Contains(extra, "apnsEndpoint") {
				extra += "apnsEndpoint: dry-run\n"
			}
			addr := writeConfig(t, dir, extra)
			fifo := filepath.Join(dir, tc.fifo)
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := filepath.Join(dir, "xapsd.yaml")
			code, out := runWithin(t, 20*time.Second, "--config", cfg, "--check-config")
			switch {
			case code == -1:
				t.Errorf("--check-config hangs on a named pipe as %s:\n%s", tc.fifo, out)
			case tc.check && (code != 1 || !strings.Contains(out, fifo)):
				t.Errorf("--check-config: exit %d, want 1 and the path %s:\n%s", code, fifo, out)
			}
			if tc.start == stops {
				code, out = runWithin(t, 20*time.Second, "--config", cfg)
				if code == -1 {
					t.Fatalf("the start hangs on a named pipe as %s:\n%s", tc.fifo, out)
				}
				if code != 1 || !strings.Contains(out, fifo) || !strings.Contains(out, "not a regular file") {
					t.Errorf("the start: exit %d, want 1 and the path %s, not a regular file:\n%s", code, fifo, out)
				}
				return
			}
			d := startDaemon(t, dir, addr)
			if !d.waitLog(fifo, 10*time.Second) || !strings.Contains(d.log.String(), "not a regular file") {
				t.Errorf("the daemon does not say that %s is not a regular file", fifo)
			}
			if code := d.stop(); code != 0 {
				t.Errorf("exit %d after SIGTERM", code)
			}
		})
	}
	t.Run("the configuration file", func(t *testing.T) {
		fifo := filepath.Join(testutil.TempDir(t), "xapsd.yaml")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"--config", fifo, "--check-config"}, {"--config", fifo}} {
			code, out := runWithin(t, 20*time.Second, args...)
			if code != 1 || !strings.Contains(out, fifo) || !strings.Contains(out, "not a regular file") {
				t.Errorf("xapsd %s: exit %d, want 1 and the path, not a regular file:\n%s", strings.Join(args, " "), code, out)
			}
		}
	})
}
