package config

import "time"

// Values xapsd has no key for. The daemon passes them down like the keys'
// values, under the same names, so that every default xapsd has is in
// this package and no part below it makes up its own.
const (
	// MaxDevicesPerUser caps one user's registrations, whatever their
	// account ids; the oldest is dropped (maxDevicesPerAccount caps those
	// of one account id).
	MaxDevicesPerUser = 100
	// RegistrationRefresh: a re-registration identical to a stored one
	// younger than this is acknowledged without being stored again (iOS
	// registers again on every IMAP connection).
	RegistrationRefresh = time.Hour
	// RegistryCompactAfterBytes compacts the registry's journal once it
	// has grown by this much (or by the size of the last snapshot, if that
	// is more), also before registryCompactAfter records.
	RegistryCompactAfterBytes = 64 << 20
	// RegistryCheckInterval is how often the registry's store looks
	// whether a failed disk or database takes writes again, and whether
	// its files were deleted under it.
	RegistryCheckInterval = 5 * time.Second
	// DatabaseWaitLoad is how long a start waits for PostgreSQL (to
	// connect, then to load) before it goes on without the registrations,
	// loading them once it can.
	DatabaseWaitLoad = 10 * time.Second
	// DatabaseCommitTimeout bounds one commit to PostgreSQL, retries
	// included: a /register waits no longer for a database that does not
	// answer.
	DatabaseCommitTimeout = 3 * time.Second
	// APNsMinBackoff and APNsMaxBackoff bound the wait before a push is
	// retried (429, 5xx, a transport error); it doubles from the one to
	// the other, jittered.
	APNsMinBackoff = time.Second
	APNsMaxBackoff = 5 * time.Minute
	// APNsProbeInterval is how often one push is tried while APNs refuses
	// the credential.
	APNsProbeInterval = time.Minute
	// APNsTrustAfterChange: for this long after a start or a credential
	// change, BadDeviceToken never deletes a registration (the
	// configuration may be what is wrong).
	APNsTrustAfterChange = 10 * time.Minute
	// APNsExtraConnectionIdle: a connection to APNs beyond a credential's
	// first that carried no push for this long (checked this often) is
	// closed; the first stays until 15 minutes without pushes.
	APNsExtraConnectionIdle = time.Minute
)
