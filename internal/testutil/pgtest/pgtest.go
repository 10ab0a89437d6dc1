// Package pgtest runs a throw-away PostgreSQL cluster for tests and
// benchmarks: a real server from Debian's postgresql package, initialised
// into a temporary folder, listening on its own loopback port, running as an
// unprivileged user, and removed again by Close. Never the system cluster,
// never a mock.
//
// It does not import "testing", so cmd/xapsd-bench can use it too.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
)

// Cluster is one running (or stopped) PostgreSQL server.
type Cluster struct {
	// URL reaches the database "xapsd" as the superuser "xapsd", without a
	// password (trust on loopback: the cluster lives as long as the test).
	URL  string
	Port int

	dir      string // data folder and socket folder live below
	bin      string // folder with initdb, postgres, pg_ctl
	uid      uint32
	gid      uint32
	log      string
	settings []string // extra postgres arguments, again on Restart
	password string   // for the client tools (createdb, psql)
	proc     *exec.Cmd
	done     chan struct{}
}

// Options configure Start.
type Options struct {
	// Settings are extra postgres -c name=value settings.
	Settings map[string]string
	// Password, when set, is the xapsd user's password, and the server
	// asks for it (scram-sha-256) instead of trusting every local client.
	// URL does not carry it.
	Password string
}

// BinDir finds the newest installed PostgreSQL server binaries
// (/usr/lib/postgresql/<version>/bin on Debian).
func BinDir() (string, error) {
	if d := os.Getenv("XAPS_PG_BINDIR"); d != "" {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("no PostgreSQL server found in /usr/lib/postgresql/*/bin (apt-get install postgresql; test/deps.sh does)")
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// StartT starts a cluster for a test and closes it when the test ends;
// it fails the test if the cluster does not start.
func StartT(t testutil.TB, o Options) *Cluster {
	t.Helper()
	c, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Start initialises and starts a new cluster. It must run as root or as an
// ordinary user; as root the server runs as the system user "postgres" (or
// "nobody"), because PostgreSQL refuses to run as root.
func Start(o Options) (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "xapsd-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir, bin: bin, log: filepath.Join(dir, "postgres.log")}
	if os.Geteuid() == 0 {
		if err := c.pickUser(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		os.Chmod(dir, 0o755)
		os.Chown(dir, int(c.uid), int(c.gid))
	}
	port, err := testutil.FreePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	c.Port = port
	c.URL = fmt.Sprintf("postgres://xapsd@127.0.0.1:%d/xapsd?sslmode=disable", port)
	initdb := []string{"-D", c.data(), "-U", "xapsd", "-A", "trust", "-E", "UTF8", "--no-instructions"}
	if o.Password != "" {
		pwfile := filepath.Join(dir, "initdb.pw")
		if err := os.WriteFile(pwfile, []byte(o.Password+"\n"), 0o600); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		os.Chown(pwfile, int(c.uid), int(c.gid))
		initdb = append(initdb, "-A", "scram-sha-256", "--pwfile", pwfile)
		c.password = o.Password
	}
	if out, err := c.command(filepath.Join(bin, "initdb"), initdb...).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	for k, v := range o.Settings {
		c.settings = append(c.settings, "-c", k+"="+v)
	}
	if err := c.startServer(); err != nil {
		c.Close()
		return nil, err
	}
	if out, err := c.command(filepath.Join(bin, "createdb"), "-h", "127.0.0.1", "-p", strconv.Itoa(port),
		"-U", "xapsd", "xapsd").CombinedOutput(); err != nil {
		c.Close()
		return nil, fmt.Errorf("createdb: %v\n%s", err, out)
	}
	return c, nil
}

func (c *Cluster) pickUser() error {
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.uid, c.gid = uint32(uid), uint32(gid)
		return nil
	}
	return errors.New("no unprivileged user (postgres or nobody) to run PostgreSQL as")
}

func (c *Cluster) data() string    { return filepath.Join(c.dir, "data") }
func (c *Cluster) sockets() string { return c.dir }

func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.password != "" {
		cmd.Env = append(cmd.Env, "PGPASSWORD="+c.password)
	}
	if c.uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: c.uid, Gid: c.gid}}
	}
	return cmd
}

func (c *Cluster) startServer() error {
	args := []string{"-D", c.data(), "-p", strconv.Itoa(c.Port), "-k", c.sockets(),
		"-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"}
	args = append(args, c.settings...)
	logf, err := os.OpenFile(c.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	c.proc = c.command(filepath.Join(c.bin, "postgres"), args...)
	c.proc.Stdout, c.proc.Stderr = logf, logf
	if err := c.proc.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start postgres: %w", err)
	}
	logf.Close()
	c.done = make(chan struct{})
	go func(p *exec.Cmd, done chan struct{}) { p.Wait(); close(done) }(c.proc, c.done)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", c.Port))
		if err == nil {
			conn.Close()
			// Accepting TCP is not yet accepting sessions.
			if out, err := c.command(filepath.Join(c.bin, "pg_isready"), "-h", "127.0.0.1",
				"-p", strconv.Itoa(c.Port), "-U", "xapsd").CombinedOutput(); err == nil {
				return nil
			} else if ctx.Err() != nil {
				return fmt.Errorf("postgres not ready: %s", out)
			}
		}
		select {
		case <-c.done:
			return fmt.Errorf("postgres exited at start:\n%s", c.Log())
		case <-ctx.Done():
			return fmt.Errorf("postgres did not listen on port %d within 30 s:\n%s", c.Port, c.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop shuts the server down (fast mode: sessions are disconnected), as an
// outage would; Restart brings it back on the same port with the same data.
func (c *Cluster) Stop() error {
	if c.proc == nil {
		return nil
	}
	select {
	case <-c.done:
		c.proc = nil
		return nil
	default:
	}
	testutil.StopProcess(c.proc.Process, c.done, syscall.SIGINT, 30*time.Second)
	c.proc = nil
	return nil
}

// Restart starts a stopped server again.
func (c *Cluster) Restart() error {
	if c.proc != nil {
		return errors.New("pgtest: server is running")
	}
	return c.startServer()
}

// Log returns the server's log so far.
func (c *Cluster) Log() string {
	b, _ := os.ReadFile(c.log)
	return string(b)
}

// Close stops the server and removes everything it wrote.
func (c *Cluster) Close() error {
	c.Stop()
	return os.RemoveAll(c.dir)
}

// SQL runs statements through psql as the superuser, for test set-up.
func (c *Cluster) SQL(statements string) (string, error) {
	psql := filepath.Join(c.bin, "psql")
	cmd := c.command(psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
		strconv.Itoa(c.Port), "-U", "xapsd", "-d", "xapsd", "-At", "-c", statements)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
