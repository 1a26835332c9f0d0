package driver

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// poolConfig is testConfig with the fake mounter (no root needed: volumes
// are directories in temporary directories) and a pool "fast" of 10 GiB at
// <dir>/fast besides the default pool's 100 GiB.
func poolConfig(t *testing.T) (Config, *fakeMounter) {
	cfg := testConfig(t)
	fm := &fakeMounter{mounts: map[string]string{}}
	cfg.Mounter = fm
	cfg.Pools = []Pool{{Name: "fast", DataRoot: filepath.Join(filepath.Dir(cfg.DataRoot), "fast"), Capacity: 10 << 30}}
	return cfg, fm
}

func inPool(name, pool string) *csi.CreateVolumeRequest {
	req := createRequest(name)
	if pool != "" {
		req.Parameters = map[string]string{ParamPool: pool}
	}
	return req
}

// createAB creates volume a in pool fast and b in the default pool, and
// returns a's volume context.
func createAB(t *testing.T, ts *testServer) map[string]string {
	t.Helper()
	resp, err := ts.controller.CreateVolume(testContext(t), inPool("a", "fast"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.controller.CreateVolume(testContext(t), inPool("b", "")); err != nil {
		t.Fatal(err)
	}
	return resp.GetVolume().GetVolumeContext()
}

// TestPoolPlacement follows a volume of a class with pool: fast through
// the CSI calls: it lives in fast's data root, its context names the pool
// and that data root, and publishing, stats, expansion and deletion find it
// there.
func TestPoolPlacement(t *testing.T) {
	cfg, fm := poolConfig(t)
	fast := cfg.Pools[0].DataRoot
	ts := startServer(t, cfg)
	ctx := testContext(t)
	vctx := createAB(t, ts)
	for _, c := range []struct{ root, id, other string }{{fast, "a", "b"}, {cfg.DataRoot, "b", "a"}} {
		if _, err := os.Stat(filepath.Join(c.root, volumesDir, c.id)); err != nil {
			t.Errorf("volume %s not in %s: %v", c.id, c.root, err)
		}
		if _, err := os.Stat(filepath.Join(c.root, volumesDir, c.other)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("volume %s in %s too: %v", c.other, c.root, err)
		}
	}
	fastID, err := os.ReadFile(filepath.Join(fast, identityName))
	if err != nil {
		t.Fatal(err)
	}
	if vctx[VolumeContextPool] != "fast" || vctx[VolumeContextDataRoot] != strings.TrimSpace(string(fastID)) {
		t.Errorf("volume context %v, want pool fast and fast's identity %s", vctx, fastID)
	}
	if got := ts.Volumes(); len(got) != 2 || got[0].Pool != "fast" || got[1].Pool != DefaultPool {
		t.Errorf("Volumes() = %+v, want a in fast and b in %s", got, DefaultPool)
	}
	list, err := ts.controller.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(list.GetEntries()) != 2 {
		t.Fatalf("ListVolumes: %v, %v; want both volumes", list, err)
	}

	target := filepath.Join(ts.dir, "target")
	pub := publishRequest("a", target)
	pub.VolumeContext = vctx
	if _, err := ts.node.NodePublishVolume(ctx, pub); err != nil {
		t.Fatal(err)
	}
	if got, want := fm.source(target), filepath.Join(fast, volumesDir, "a"); got != want {
		t.Errorf("published %q, want %q", got, want)
	}
	if _, err := ts.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "a", VolumePath: target}); err != nil {
		t.Errorf("NodeGetVolumeStats: %v", err)
	}
	if _, err := ts.controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
		VolumeId: "a", CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 20},
	}); err != nil {
		t.Errorf("ControllerExpandVolume: %v", err)
	}
	if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "a", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(fast, volumesDir, "a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("volume a still in fast after DeleteVolume: %v", err)
	}
}

// TestPoolMissing: a class naming a pool this node lacks gets
// ResourceExhausted (the claim goes back to the scheduler) with
// NoPoolMessage, and GetCapacity reports no room for it; the other pools
// report their own room.
func TestPoolMissing(t *testing.T) {
	cfg, _ := poolConfig(t)
	ts := startServer(t, cfg)
	ctx := testContext(t)

	_, err := ts.controller.CreateVolume(ctx, inPool("a", "slow"))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), NoPoolMessage+" slow") {
		t.Errorf("CreateVolume in a missing pool: %v, want ResourceExhausted with %q", err, NoPoolMessage+" slow")
	}
	if _, err := ts.controller.CreateVolume(ctx, inPool("b", "fast")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		pool string
		want int64
	}{{"", 100 << 30}, {DefaultPool, 100 << 30}, {"fast", 10<<30 - 1<<20}, {"slow", 0}} {
		req := &csi.GetCapacityRequest{Parameters: inPool("x", c.pool).GetParameters()}
		resp, err := ts.controller.GetCapacity(ctx, req)
		if err != nil || resp.GetAvailableCapacity() != c.want || resp.GetMaximumVolumeSize().GetValue() != c.want {
			t.Errorf("GetCapacity(pool %q) = %v, %v; want %d", c.pool, resp, err, c.want)
		}
	}
	if got, want := ts.Capacity(), int64(110<<30); got != want {
		t.Errorf("Capacity() = %d, want the pools' sum %d", got, want)
	}
	if got, want := ts.Allocated(), int64(1<<20); got != want {
		t.Errorf("Allocated() = %d, want %d", got, want)
	}
}

// TestPoolUniqueIDs: an ID one pool holds cannot be made in another, and
// ValidateVolumeCapabilities does not confirm another pool's parameters.
func TestPoolUniqueIDs(t *testing.T) {
	cfg, _ := poolConfig(t)
	ts := startServer(t, cfg)
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, inPool("a", "fast")); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.controller.CreateVolume(ctx, inPool("a", "fast")); err != nil {
		t.Errorf("CreateVolume again in the same pool: %v, want the existing volume", err)
	}
	_, err := ts.controller.CreateVolume(ctx, inPool("a", ""))
	if status.Code(err) != codes.AlreadyExists || !strings.Contains(err.Error(), "exists in pool fast") {
		t.Errorf("CreateVolume of fast's ID in the default pool: %v, want AlreadyExists naming pool fast", err)
	}
	if n := len(ts.Volumes()); n != 1 {
		t.Errorf("%d volumes, want 1", n)
	}
	resp, err := ts.controller.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{
		VolumeId: "a", VolumeCapabilities: []*csi.VolumeCapability{rwo}, Parameters: map[string]string{ParamDirectoryMode: "0777"},
	})
	if err != nil || resp.GetConfirmed() != nil || !strings.Contains(resp.GetMessage(), "in pool fast") {
		t.Errorf("ValidateVolumeCapabilities with the default pool's parameters: %v, %v; want unconfirmed naming pool fast", resp, err)
	}
}

// TestPoolRestart: after a restart every volume is found in its pool, a
// volume whose pool is no longer given cannot be published (with a
// message that says which pool is missing), and a corrupt record in a pool
// is reported with the pool's name.
func TestPoolRestart(t *testing.T) {
	cfg, _ := poolConfig(t)
	ts := startServer(t, cfg)
	ctx := testContext(t)
	vctx := createAB(t, ts)
	ts.stop()

	fast := cfg.Pools[0].DataRoot
	if err := os.WriteFile(filepath.Join(fast, metaDir, "c.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts = startServer(t, cfg)
	got := ts.Volumes()
	if len(got) != 2 || got[0].ID != "a" || got[0].Pool != "fast" || got[1].ID != "b" || got[1].Pool != DefaultPool {
		t.Errorf("after a restart: %+v, want a in fast and b in %s", got, DefaultPool)
	}
	if reason := ts.Unavailable()["c"]; !strings.HasPrefix(reason, "in pool fast: ") {
		t.Errorf("Unavailable()[c] = %q, want a reason naming pool fast", reason)
	}
	_, err := ts.controller.CreateVolume(ctx, inPool("c", ""))
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("CreateVolume of an ID set aside in fast: %v, want AlreadyExists", err)
	}
	ts.stop()

	cfg.Pools = nil
	ts = startServer(t, cfg)
	pub := publishRequest("a", filepath.Join(ts.dir, "target"))
	pub.VolumeContext = vctx
	_, err = ts.node.NodePublishVolume(ctx, pub)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--pool fast=") {
		t.Errorf("NodePublishVolume without the volume's pool: %v, want FailedPrecondition telling to give --pool fast", err)
	}
}

// TestPoolEnforcement: sizeEnforcement: required is checked against the
// chosen pool's backend: refused in a pool of directories, accepted in a
// pool whose backend enforces sizes.
func TestPoolEnforcement(t *testing.T) {
	cfg, fb, _ := fakeConfig(t)
	cfg.Backend = BackendDirectory
	cfg.Pools = []Pool{{Name: "quota", DataRoot: filepath.Join(filepath.Dir(cfg.DataRoot), "quota"), Backend: fb.Name()}}
	ts := startServer(t, cfg)
	ctx := testContext(t)
	required := func(name, pool string) *csi.CreateVolumeRequest {
		req := inPool(name, pool)
		if req.Parameters == nil {
			req.Parameters = map[string]string{}
		}
		req.Parameters[ParamSizeEnforcement] = SizeEnforcementRequired
		return req
	}
	_, err := ts.controller.CreateVolume(ctx, required("a", ""))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), NotEnforcedMessage) {
		t.Errorf("required in the directory pool: %v, want ResourceExhausted with %q", err, NotEnforcedMessage)
	}
	if _, err := ts.controller.CreateVolume(ctx, required("b", "quota")); err != nil {
		t.Errorf("required in the enforcing pool: %v", err)
	}
	if got := ts.Volumes(); len(got) != 1 || got[0].Backend != fb.Name() || got[0].Pool != "quota" {
		t.Errorf("Volumes() = %+v, want b of backend %s in pool quota", got, fb.Name())
	}
}

// TestPoolTargetPaths: a target inside any pool's data root is refused.
func TestPoolTargetPaths(t *testing.T) {
	cfg, _ := poolConfig(t)
	ts := startServer(t, cfg)
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, inPool("a", "")); err != nil {
		t.Fatal(err)
	}
	_, err := ts.node.NodePublishVolume(ctx, publishRequest("a", filepath.Join(cfg.Pools[0].DataRoot, "t")))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "must not be inside the data root") {
		t.Errorf("publish into the fast pool's data root: %v, want InvalidArgument", err)
	}
}

func TestValidatePools(t *testing.T) {
	for _, c := range []struct {
		name  string
		pools []Pool
		want  string // in the error; "" means valid
	}{
		{"none", nil, ""},
		{"two", []Pool{{Name: "fast", DataRoot: "/mnt/nvme"}, {Name: "big-1", DataRoot: "/mnt/hdd", Backend: BackendDirectory, Capacity: 1}}, ""},
		{"bad name", []Pool{{Name: "Fast", DataRoot: "/mnt/nvme"}}, `pool name "Fast" is not valid`},
		{"empty name", []Pool{{Name: "", DataRoot: "/mnt/nvme"}}, `pool name "" is not valid`},
		{"default", []Pool{{Name: DefaultPool, DataRoot: "/mnt/nvme"}}, "given twice"},
		{"duplicate", []Pool{{Name: "a", DataRoot: "/mnt/a"}, {Name: "a", DataRoot: "/mnt/b"}}, "given twice"},
		{"relative", []Pool{{Name: "a", DataRoot: "mnt/a"}}, "must be an absolute, clean path"},
		{"unclean", []Pool{{Name: "a", DataRoot: "/mnt/a/"}}, "must be an absolute, clean path"},
		{"root", []Pool{{Name: "a", DataRoot: "/"}}, "must be an absolute, clean path"},
		{"the data root", []Pool{{Name: "a", DataRoot: "/var/lib/stickyvol"}}, "data root /var/lib/stickyvol of pool default"},
		{"inside the data root", []Pool{{Name: "a", DataRoot: "/var/lib/stickyvol/a"}}, "inside the data root /var/lib/stickyvol"},
		{"holding the data root", []Pool{{Name: "a", DataRoot: "/var/lib"}}, "of pool default"},
		{"nested pools", []Pool{{Name: "a", DataRoot: "/mnt/a"}, {Name: "b", DataRoot: "/mnt/a/b"}}, "data root /mnt/a of pool a"},
		{"sibling prefix", []Pool{{Name: "a", DataRoot: "/mnt/a"}, {Name: "b", DataRoot: "/mnt/ab"}}, ""},
		{"bad backend", []Pool{{Name: "a", DataRoot: "/mnt/a", Backend: "zfs"}}, `pool a: unknown backend "zfs"`},
		{"negative capacity", []Pool{{Name: "a", DataRoot: "/mnt/a", Capacity: -1}}, "must not be negative"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := ValidatePools("/var/lib/stickyvol", c.pools)
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Errorf("ValidatePools: %v, want %q", err, c.want)
			}
		})
	}
}
