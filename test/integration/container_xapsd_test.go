package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xapsd/xapsd/internal/testutil"
)

// The daemon alone: the Dockerfile's xapsd target, built on the distroless
// stand-in and set up as docs/docker-mailserver.md ("The daemon in its own
// container") says: its folder mounted at /etc/xapsd, the registry in a
// named volume, listening beyond loopback with a pluginSecretFile. The
// container's network namespace has, besides its loopback, the address
// 192.0.2.10, standing in for the compose network another container
// reaches it on.
func TestDaemonImage(t *testing.T) {
	img := containerImages(t)
	ns := newNetns(t)
	const beyond = "192.0.2.10"
	if out, err := exec.Command("nsenter", "--net="+ns.path, "ip", "address", "add", beyond+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip address add: %v %s", err, out)
	}
	apns := startAPNsIn(t, ns)

	// The configuration folder, as the docs have the admin make it.
	config := testutil.TempDir(t)
	writeCredentials(t, config, apns)
	const secret = "container-secret-0123456789"
	writeFile := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(config, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeFile("plugin.secret", secret+"\n")
	yaml := fmt.Sprintf("listenAddr: \"\"\nmetricsListenAddr: \":11621\"\ncertificateFilePem: push.pem\ncertificateFilePemKey: push.key\napnsEndpoint: %s\n", apns.URL)
	writeFile("xapsd.yaml", yaml)
	chownTree(t, config, xapsdUID, xapsdUID)
	os.Chmod(config, 0o700)

	// Without pluginSecretFile xapsd refuses to listen beyond loopback.
	state := fmt.Sprintf("xapsd-test-%d-state", os.Getpid())
	podman(t, "volume", "create", state)
	t.Cleanup(func() { podmanRun("volume", "rm", "--force", state) })
	opts := []string{"--volume", config + ":/etc/xapsd", "--volume", state + ":/var/lib/xapsd",
		"--env", "SSL_CERT_FILE=/etc/xapsd/apns-ca.pem"}
	refused := startContainer(t, ns, img.daemon, opts...)
	if code := refused.waitExit(30 * time.Second); code != "1" {
		t.Errorf("xapsd without pluginSecretFile exited %s, want 1", code)
	}
	if log := refused.logs(); !strings.Contains(log, "listens beyond this machine without authentication: set pluginSecretFile") {
		t.Errorf("no reason given for refusing to start:\n%s", log)
	}

	writeFile("xapsd.yaml", yaml+"pluginSecretFile: plugin.secret\n")
	chownTree(t, config, xapsdUID, xapsdUID)
	c := startContainer(t, ns, img.daemon, opts...)
	client := ns.httpClient()
	testutil.WaitWithin(t, 30*time.Second, "/readyz on "+beyond+":11621", func() bool {
		status, body, err := fetch(client, "GET", "http://"+beyond+":11621/readyz", "", "")
		return err == nil && status == 200 && strings.TrimSpace(body) == "ok"
	})
	if user := c.inspect("{{.Config.User}}"); user != fmt.Sprintf("%d:%d", xapsdUID, xapsdUID) {
		t.Errorf("the image's user is %q", user)
	}
	status := readFile("/proc/" + c.inspect("{{.State.Pid}}") + "/status")
	if want := fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d\n", xapsdUID, xapsdUID, xapsdUID, xapsdUID); !strings.Contains(status, want) {
		t.Errorf("xapsd does not run as %d:\n%s", xapsdUID, status)
	}
	mountpoint := strings.TrimSpace(podman(t, "volume", "inspect", "--format", "{{.Mountpoint}}", state))
	wantOwner(t, mountpoint, xapsdUID, xapsdUID, 0o700)

	// The plugin's requests, from beyond loopback: only with the secret.
	plugin := "http://" + beyond + ":11619"
	if status, _, _ := fetch(client, "POST", plugin+"/register", registerBody("alice@example.org", acc, token(1)), ""); status != http.StatusUnauthorized {
		t.Errorf("/register without the secret answered %d, want 401", status)
	}
	if status, body, err := fetch(client, "POST", plugin+"/register", registerBody("alice@example.org", acc, token(1)), secret); status != 200 || body != topicA {
		t.Fatalf("/register = %d %q %v", status, body, err)
	}
	if status, _, err := fetch(client, "POST", plugin+"/notify", notifyBody("alice@example.org", "INBOX", "MessageNew"), secret); status != 200 {
		t.Fatalf("/notify = %d %v", status, err)
	}
	if reqs, err := apns.WaitRequests(1, 10*time.Second); err != nil || reqs[0].Token != token(1) {
		t.Fatalf("no push: %v", err)
	}
	took, code := c.stop()
	if code != "0" || took >= 10*time.Second {
		t.Errorf("podman stop took %v and xapsd exited %s; want exit 0 within 10 s", took, code)
	}

	// A new container on the same volume has the registration.
	c2 := startContainer(t, ns, img.daemon, opts...)
	testutil.WaitWithin(t, 30*time.Second, "the new container's /readyz", func() bool {
		status, _, err := fetch(client, "GET", "http://"+beyond+":11621/readyz", "", "")
		return err == nil && status == 200
	})
	if list := c2.mustExec("xapsd", "devices", "list"); !strings.Contains(list, token(1)) {
		t.Fatalf("the registration is gone after re-creating the container:\n%s", list)
	}
	if status, _, err := fetch(client, "POST", plugin+"/notify", notifyBody("alice@example.org", "INBOX", "MessageNew"), secret); status != 200 {
		t.Fatalf("/notify after re-creating = %d %v", status, err)
	}
	if _, err := apns.WaitRequests(2, 10*time.Second); err != nil {
		t.Errorf("no push after re-creating the container: %v", err)
	}
}

// fetch sends a request, with the plugin's bearer secret if there is one,
// and returns the status and body.
func fetch(client *http.Client, method, url, body, secret string) (int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// chownTree gives dir and what is in it to uid:gid.
func chownTree(t *testing.T, dir string, uid, gid int) {
	t.Helper()
	err := filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
	if err != nil {
		t.Fatal(err)
	}
}
