package registry_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/xapsd/xapsd/internal/filestore"
	"github.com/xapsd/xapsd/internal/registry"
	"github.com/xapsd/xapsd/internal/statedir"
)

// A registry on the files of a state folder, as the daemon opens it
// without databaseURL: a registration is durable when Register returns,
// a mailbox change finds the devices that asked for that mailbox, and a
// removal says whether Apple's 410 came before the device registered
// again.
func Example() {
	dir, _ := os.MkdirTemp("", "registry-example-")
	defer os.RemoveAll(dir)
	store := filestore.New(filestore.Options{Dir: statedir.New(filepath.Join(dir, "database.json"))})
	r, err := registry.Open(store, registry.Options{RegistrationTTL: 30 * 24 * time.Hour, MaxDevicesPerAccount: 8})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	ctx := context.Background()

	phone := registry.Key{User: "Alice@example.com", AccountID: "0715A26B-CA09-4730-A419-793000CA982E",
		DeviceToken: "2918390218931890821908309283098109381029309829018310983092892829"}
	registered := time.Now()
	if err := r.Register(ctx, registry.Registration{Key: phone, Mailboxes: []string{"INBOX", "Notes"}, Registered: registered}); err != nil {
		fmt.Println(err)
		return
	}

	// User names are folded as Dovecot folds them.
	fmt.Println(len(r.Lookup("alice@example.com", "Notes", false).Targets))
	fmt.Println(len(r.Lookup("alice@example.com", "Trash", false).Targets))
	fmt.Println(len(r.Lookup("alice@example.com", "Notes", true).Targets)) // INBOX only, as the old daemon

	// Apple says the token died an hour before the device registered:
	// the registration stays.
	kept, err := r.Remove(ctx, phone, registered.Add(-time.Hour))
	fmt.Println(kept, err)
	// A 410 after the registration removes it.
	kept, err = r.Remove(ctx, phone, registered.Add(time.Hour))
	fmt.Println(kept, err, r.Lookup("alice@example.com", "INBOX", false).KnownUser)
	// Output:
	// 1
	// 0
	// 0
	// true <nil>
	// false <nil> false
}
