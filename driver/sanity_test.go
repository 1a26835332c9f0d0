package driver

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// TestSanity runs the CSI spec's own test suite, csi-sanity, against the
// real driver over its unix socket, with real bind mounts. Run it with -v to
// see Ginkgo's summary (ran, passed, skipped). Groups skip where the driver
// does not advertise the capability (node expansion, staging, controller
// publish, volume health, GetSnapshot, group snapshots, ...); the snapshot
// specs run.
func TestSanity(t *testing.T) {
	testutil.RequireRoot(t)
	runSanity(t, testConfig(t))
}

// TestSanityPool runs csi-sanity on a driver with two pools, its volumes in
// the pool that is not the default one: every call must find them there.
// It runs in a child process (runInSanityChild).
func TestSanityPool(t *testing.T) {
	if inSanityChild() {
		cfg := testConfig(t)
		cfg.Pools = []Pool{{Name: "fast", DataRoot: filepath.Join(filepath.Dir(cfg.DataRoot), "fast"), Capacity: 1 << 40}}
		runSanity(t, cfg, ParamPool, "fast")
		return
	}
	testutil.RequireRoot(t)
	runInSanityChild(t)
}

// TestSanityBlock runs csi-sanity with the block access type: every volume
// it makes is a block volume, published as a loop device onto a target
// file. It runs in a child process (runInSanityChild).
func TestSanityBlock(t *testing.T) {
	if inSanityChild() {
		runSanityWith(t, testConfig(t), func(sc *sanity.TestConfig) { sc.TestVolumeAccessType = "block" })
		return
	}
	requireLoop(t)
	runInSanityChild(t)
}

// sanityChild is set in the environment of a child process that
// runInSanityChild starts.
const sanityChild = "STICKYVOL_SANITY_CHILD"

// inSanityChild reports whether this process is a child that
// runInSanityChild started, where the test is to run csi-sanity itself.
func inSanityChild() bool { return os.Getenv(sanityChild) == "1" }

// runInSanityChild runs the test t again in a child process of the test
// binary that runs only t, and fails t if the child does not pass. Ginkgo,
// under csi-sanity, runs one suite per process and TestSanity takes it, so
// a second driver configuration needs a process of its own.
func runInSanityChild(t *testing.T) {
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), sanityChild+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("csi-sanity in a child process: %v\n%s", err, out)
	}
}

// runSanity runs csi-sanity against a driver started with cfg; params are
// StorageClass parameters as key, value pairs for the volumes it makes.
func runSanity(t *testing.T, cfg Config, params ...string) {
	runSanityWith(t, cfg, nil, params...)
}

// runSanityWith is runSanity with a change to csi-sanity's configuration.
func runSanityWith(t *testing.T, cfg Config, change func(*sanity.TestConfig), params ...string) {
	cfg.Capacity = 1 << 40 // sanity makes several 10 GiB volumes at once
	ts := startServer(t, cfg)

	sc := sanity.NewTestConfig()
	sc.Address = ts.socket
	sc.TargetPath = filepath.Join(ts.dir, "target")
	sc.StagingPath = filepath.Join(ts.dir, "staging")
	sc.TestVolumeParameters = map[string]string{}
	for i := 0; i+1 < len(params); i += 2 {
		sc.TestVolumeParameters[params[i]] = params[i+1]
	}
	if change != nil {
		change(&sc)
	}
	sanity.Test(t, sc)

	// What the suite made, it also cleaned up: a user would see leftovers
	// as capacity that never comes back.
	if vols := ts.Volumes(); len(vols) != 0 {
		t.Errorf("volumes left after the suite: %d, first %q", len(vols), vols[0].ID)
	}
	if a := ts.Allocated(); a != 0 {
		t.Errorf("bytes still allocated after the suite: %d", a)
	}
	for _, s := range ts.pools.all() {
		if entries, err := os.ReadDir(filepath.Join(s.rootPath, volumesDir)); err != nil || len(entries) != 0 {
			t.Errorf("pool %s: volume directories left after the suite: %d (%v)", s.pool, len(entries), err)
		}
		if entries, err := os.ReadDir(filepath.Join(s.rootPath, imagesDir)); err == nil && len(entries) != 0 {
			t.Errorf("pool %s: image or block files left after the suite: %d", s.pool, len(entries))
		}
		if entries, err := os.ReadDir(filepath.Join(s.rootPath, snapshotsDir)); err == nil && len(entries) != 0 {
			t.Errorf("pool %s: snapshots left after the suite: %d, first %s", s.pool, len(entries), entries[0].Name())
		}
	}
}
