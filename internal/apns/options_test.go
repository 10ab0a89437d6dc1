package apns

import "github.com/xapsd/xapsd/internal/config"

// daemonOptions is o with what it leaves zero set as the daemon sets it
// (config's defaults): the sender the tests run is the daemon's, except
// for what a test chooses.
func daemonOptions(o Options) Options {
	c := config.Default()
	if o.Concurrency == 0 {
		o.Concurrency = c.APNsConcurrency
	}
	if o.Expiration == 0 {
		o.Expiration = c.APNsExpiration
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = config.APNsMinBackoff
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = config.APNsMaxBackoff
	}
	if o.ProbeInterval == 0 {
		o.ProbeInterval = config.APNsProbeInterval
	}
	if o.TrustAfterChange == 0 {
		o.TrustAfterChange = config.APNsTrustAfterChange
	}
	return o
}
