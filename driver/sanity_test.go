package driver

import (
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// TestSanity runs the CSI spec's own test suite, csi-sanity, against the
// real driver over its unix socket, with real bind mounts. Run it with -v to
// see Ginkgo's summary (ran, passed, skipped). Groups skip where the driver
// does not advertise the capability (snapshots, node expansion, staging,
// controller publish, volume health, ...).
func TestSanity(t *testing.T) {
	testutil.RequireRoot(t)
	runSanity(t, testConfig(t))
}

// runSanity runs csi-sanity against a driver started with cfg.
func runSanity(t *testing.T, cfg Config) {
	cfg.Capacity = 1 << 40 // sanity makes several 10 GiB volumes at once
	ts := startServer(t, cfg)

	sc := sanity.NewTestConfig()
	sc.Address = ts.socket
	sc.TargetPath = filepath.Join(ts.dir, "target")
	sc.StagingPath = filepath.Join(ts.dir, "staging")
	sanity.Test(t, sc)

	// What the suite made, it also cleaned up: a user would see leftovers
	// as capacity that never comes back.
	if vols := ts.Volumes(); len(vols) != 0 {
		t.Errorf("volumes left after the suite: %d, first %q", len(vols), vols[0].ID)
	}
	if a := ts.Allocated(); a != 0 {
		t.Errorf("bytes still allocated after the suite: %d", a)
	}
}
