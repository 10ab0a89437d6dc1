package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The Dockerfile's two images, built and run with podman as a user with
// Docker builds and runs them. Both targets are built once per test binary
// by test/container/build.sh from this tree, on local stand-ins for their
// base images (test/container/base-images.sh makes those from Debian
// roots; no registry is reachable), and removed when the tests end. Each
// container runs in a network namespace of its own with only a loopback
// (newNetns), shared with the test and the APNs stand-in: the images'
// fixed ports (25, 143, 11619, 11621) are free there whatever else runs on
// the machine, and nothing in them is reachable from outside.

const (
	containerDir = "../container"
	// xapsdUID is the user and group xapsd runs as in both images (fixed
	// and documented in docs/docker-mailserver.md).
	xapsdUID = 65532
)

// builtImages are the two images of the Dockerfile, built on first use.
type builtImages struct {
	once       sync.Once
	skip, fail string
	mailserver string // the default target
	daemon     string // --target xapsd
}

var images builtImages

// containerImages builds the images on first use and returns them.
func containerImages(t *testing.T) *builtImages {
	t.Helper()
	images.once.Do(images.build)
	if images.skip != "" {
		t.Skip("SKIPPED: " + images.skip)
	}
	if images.fail != "" {
		t.Fatal(images.fail)
	}
	return &images
}

func (b *builtImages) build() {
	if os.Geteuid() != 0 {
		b.skip = "the container tests run podman as root (CI runs them as root)"
		return
	}
	if _, err := exec.LookPath("podman"); err != nil {
		b.skip = "podman is not installed (test/deps.sh installs podman, buildah and runc)"
		return
	}
	removeLeftovers()
	// Unique per test binary: two runs on one machine share the image
	// store, not their images.
	name := fmt.Sprintf("localhost/xapsd-test-%d", os.Getpid())
	start := time.Now()
	out, err := exec.Command(containerDir+"/build.sh", name).CombinedOutput()
	if err != nil {
		b.fail = fmt.Sprintf("test/container/build.sh: %v\n%s", err, out)
		return
	}
	b.mailserver, b.daemon = name+"/mailserver", name+"/xapsd"
	fmt.Fprintf(os.Stderr, "container tests: both images built in %v\n", time.Since(start).Round(time.Second))
}

// remove deletes the images; TestMain calls it when the tests end.
func (b *builtImages) remove() {
	if b.mailserver != "" {
		podmanRun("rmi", "--force", b.mailserver, b.daemon)
	}
}

// removeLeftovers removes the containers, volumes and images of test
// binaries that ended without their cleanup (killed, say): each is named
// xapsd-test-PID-… or localhost/xapsd-test-PID/….
func removeLeftovers() {
	for _, kind := range [][]string{
		{"ps", "--all", "--format", "{{.Names}}", "rm --force --time 0"},
		{"volume", "ls", "--format", "{{.Name}}", "volume rm --force"},
		{"images", "--format", "{{.Repository}}", "rmi --force"},
	} {
		out, _ := podmanRun(kind[:len(kind)-1]...)
		for _, name := range strings.Fields(out) {
			if ofGoneProcess(strings.TrimPrefix(name, "localhost/")) {
				podmanRun(append(strings.Fields(kind[len(kind)-1]), name)...)
			}
		}
	}
}

// ofGoneProcess reports whether name is xapsd-test-PID… of a process
// that no longer runs.
func ofGoneProcess(name string) bool {
	rest, ok := strings.CutPrefix(name, "xapsd-test-")
	if !ok {
		return false
	}
	pid, err := strconv.Atoi(rest[:len(rest)-len(strings.TrimLeft(rest, "0123456789"))])
	return err == nil && syscall.Kill(pid, 0) == syscall.ESRCH
}

// podmanRun runs podman as the tests do (test/container/podman.sh) and
// returns its standard output, and its error output with any error.
func podmanRun(args ...string) (string, error) {
	cmd := exec.Command(containerDir+"/podman.sh", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("podman %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// podman is podmanRun that fails the test when podman fails.
func podman(t *testing.T, args ...string) string {
	t.Helper()
	out, err := podmanRun(args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// ctr is one container of a test.
type ctr struct {
	t    *testing.T
	name string
}

var ctrSerial atomic.Int64

// startContainer runs image detached with the podman run options opts,
// in the network namespace ns. The container is removed when the test
// ends, after its output is shown if the test failed.
func startContainer(t *testing.T, ns *netns, image string, opts ...string) *ctr {
	t.Helper()
	c := &ctr{t: t, name: fmt.Sprintf("xapsd-test-%d-%d", os.Getpid(), ctrSerial.Add(1))}
	argv := append([]string{"run", "--detach", "--name", c.name, "--network", "ns:" + ns.path}, opts...)
	podman(t, append(argv, image)...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("output of container %s:\n%s", c.name, c.logs())
		}
		podmanRun("rm", "--force", "--time", "0", c.name)
	})
	return c
}

// exec runs a command in the container and returns its output.
func (c *ctr) exec(args ...string) (string, error) {
	return podmanRun(append([]string{"exec", c.name}, args...)...)
}

// mustExec is exec that fails the test when the command fails.
func (c *ctr) mustExec(args ...string) string {
	c.t.Helper()
	out, err := c.exec(args...)
	if err != nil {
		c.t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// logs is what the container's main process wrote.
func (c *ctr) logs() string {
	cmd := exec.Command(containerDir+"/podman.sh", "logs", c.name)
	out, _ := cmd.CombinedOutput()
	return string(out)
}

// inspect returns a field of `podman inspect` (a Go template).
func (c *ctr) inspect(format string) string {
	c.t.Helper()
	return strings.TrimSpace(podman(c.t, "inspect", "--format", format, c.name))
}

// stop is `podman stop` with its default grace of 10 s, then SIGKILL; it
// returns how long that took and the container's exit code.
func (c *ctr) stop() (time.Duration, string) {
	c.t.Helper()
	start := time.Now()
	podman(c.t, "stop", "--time", "10", c.name)
	return time.Since(start), c.inspect("{{.State.ExitCode}}")
}

// waitExit waits for the container to exit and returns its exit code.
func (c *ctr) waitExit(timeout time.Duration) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, containerDir+"/podman.sh", "wait", c.name).Output()
	if err != nil {
		c.t.Fatalf("container %s did not exit within %v: %v", c.name, timeout, err)
	}
	return strings.TrimSpace(string(out))
}

// httpClient makes its connections inside the namespace.
func (n *netns) httpClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) { return n.dial(network, addr) },
	}}
}

// docBlock returns the first fenced code block after the first line of
// the document at path that contains marker.
func docBlock(t *testing.T, path, marker string) string {
	t.Helper()
	doc := string(mustRead(t, path))
	i := strings.Index(doc, marker)
	if i < 0 {
		t.Fatalf("%s no longer has %q", path, marker)
	}
	m := regexp.MustCompile("(?s)```[a-z]*\n(.*?)```").FindStringSubmatch(doc[i:])
	if m == nil {
		t.Fatalf("%s has no code block after %q", path, marker)
	}
	return m[1]
}

// What a killed test binary left behind goes with the next build; what a
// running one uses stays.
func TestContainerLeftoversAreRemoved(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: the container tests run podman as root (CI runs them as root)")
	}
	if _, err := exec.LookPath("podman"); err != nil {
		t.Skip("SKIPPED: podman is not installed (test/deps.sh installs podman, buildah and runc)")
	}
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	left := fmt.Sprintf("xapsd-test-%d-state", gone.Process.Pid)
	mine := fmt.Sprintf("xapsd-test-%d-leftover-check", os.Getpid())
	for _, v := range []string{left, mine} {
		podman(t, "volume", "create", v)
		t.Cleanup(func() { podmanRun("volume", "rm", "--force", v) })
	}
	removeLeftovers()
	out := podman(t, "volume", "ls", "--format", "{{.Name}}")
	if strings.Contains(out, left+"\n") {
		t.Errorf("the volume %s of a gone test binary is still there", left)
	}
	if !strings.Contains(out, mine+"\n") {
		t.Errorf("the volume %s of this test binary was removed", mine)
	}
}
