package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to the loader. It must never panic, must never return a
// config together with an error, and whatever it accepts must validate and print (with
// secrets cleared) to YAML that loads back to the same config.
func FuzzLoad(f *testing.F) {
	for _, pattern := range []string{"testdata/good/*.yaml", "testdata/bad/*.yaml", "../../configs/*/xapsd.yaml"} {
		files, _ := filepath.Glob(pattern)
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, _, err := load(data, "/etc/xapsd/xapsd.yaml")
		if err != nil {
			if c != nil {
				t.Fatal("config returned along with an error")
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config does not validate: %v", err)
		}
		// Redacted hides secrets, so compare without them (appleId needs its password).
		c.AppleID, c.AppleIDHashedPassword, c.CertificateFileP12Password = "", "", ""
		back, _, err := load([]byte(c.Redacted()), c.File)
		if err != nil {
			t.Fatalf("printed config does not load: %v\n%s", err, c.Redacted())
		}
		if want := applicableOnly(c); *back != want {
			t.Fatalf("round trip changed the config:\n got %+v\nwant %+v", *back, want)
		}
	})
}
