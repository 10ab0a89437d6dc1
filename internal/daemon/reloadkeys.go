package daemon

import "github.com/xapsd/xapsd/internal/config"

// appliedAtReload reports whether SIGHUP applies a key: the log settings,
// the push credential with what it is bound to (endpoint, dry-run topic,
// the Apple ID keys) and the two shutdown budgets, which are read at the
// stop.
// Everything else (listeners, the registry, the push queue and timings)
// is built once at start; a key added later needs a restart until reload
// is taught to apply it.
func appliedAtReload(key string) bool {
	switch key {
	case "loglevel", "logFormat",
		"certificateFileP12", "certificateFileP12Password", "certificateFilePem", "certificateFilePemKey",
		"keyFileP8", "keyFileTopic", "keyFileKeyId", "keyFileTeamId",
		"appleId", "appleIdHashedPassword", "appleIdVendorCertificate", "appleIdVendorKey",
		"dryRunTopic", "apnsEndpoint", "shutdownTimeout", "shutdownDrainTimeout":
		return true
	}
	return false
}

// restartKeys lists the keys changed between the configuration the
// daemon started with and next that a reload does not apply.
func restartKeys(started, next *config.Config) []string {
	var out []string
	for _, k := range config.ChangedKeys(started, next) {
		if !appliedAtReload(k) {
			out = append(out, k)
		}
	}
	return out
}
