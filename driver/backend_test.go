package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// fakeBackend keeps volumes as directories in a directory of its own,
// outside the data root's volumes/, and remembers what it was asked to do.
// It reports what usage it is told to and fails an operation when told to.
type fakeBackend struct {
	dir string

	mu    sync.Mutex
	sizes map[string]int64
	calls []string
	used  int64
	fail  map[string]error // by operation: "create", "expand", "delete"
}

func newFakeBackend(t *testing.T) *fakeBackend {
	return &fakeBackend{dir: t.TempDir(), sizes: map[string]int64{}, fail: map[string]error{}}
}

func (f *fakeBackend) Name() string { return "fake" }

func (f *fakeBackend) Path(id string) string { return filepath.Join(f.dir, id) }

func (f *fakeBackend) call(op, id string, size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("%s %s %d", op, id, size))
	if err := f.fail[op]; err != nil {
		return err
	}
	switch op {
	case "create", "expand":
		f.sizes[id] = size
	case "delete":
		delete(f.sizes, id)
	}
	return nil
}

func (f *fakeBackend) Create(v newVolume) error {
	if err := f.call("create", v.ID, v.Size); err != nil {
		return err
	}
	return os.Mkdir(f.Path(v.ID), v.Mode)
}

func (f *fakeBackend) Expand(id string, size int64) error { return f.call("expand", id, size) }

func (f *fakeBackend) Delete(id string) error {
	if err := f.call("delete", id, 0); err != nil {
		return err
	}
	return os.RemoveAll(f.Path(id))
}

func (f *fakeBackend) Usage(id string) (volumeUsage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return volumeUsage{UsedBytes: f.used, FreeBytes: 1 << 40}, nil
}

func (f *fakeBackend) setUsed(n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.used = n
}

func (f *fakeBackend) failOn(op string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[op] = err
}

func (f *fakeBackend) history() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, "; ")
}

// fakeMounter records bind mounts instead of making them, so the node
// service runs without root.
type fakeMounter struct {
	mu     sync.Mutex
	mounts map[string]string // target -> source
}

func (m *fakeMounter) BindMount(source, target string, _ BindFlags) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mounts[target] = source
	return nil
}

func (m *fakeMounter) Remount(string, BindFlags) error { return nil }

func (m *fakeMounter) Unmount(target string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.mounts, target)
	return nil
}

func (m *fakeMounter) source(target string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mounts[target]
}

func (m *fakeMounter) Mounted(target, source string) (bool, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	src, ok := m.mounts[target]
	return ok, ok && src == source, nil
}

// fakeConfig is testConfig with the fake backend making new volumes and
// the fake mounter.
func fakeConfig(t *testing.T) (Config, *fakeBackend, *fakeMounter) {
	cfg := testConfig(t)
	fb := newFakeBackend(t)
	fm := &fakeMounter{mounts: map[string]string{}}
	cfg.Backend, cfg.backends, cfg.Mounter = fb.Name(), []backend{fb}, fm
	return cfg, fb, fm
}

// TestBackendCalls follows a volume of the fake backend through the CSI
// calls: the record names the backend, the backend gets the size and the
// mode, publishing mounts what the backend says, usage is the backend's.
func TestBackendCalls(t *testing.T) {
	cfg, fb, fm := fakeConfig(t)
	ts := startServer(t, cfg)
	ctx := testContext(t)
	if ts.Backend() != "fake" {
		t.Errorf("Backend() = %q, want fake", ts.Backend())
	}

	req := createRequest("vol")
	req.Parameters = map[string]string{ParamDirectoryMode: "0750"}
	if _, err := ts.controller.CreateVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if got := ts.Volumes()[0].Backend; got != "fake" {
		t.Errorf("record's backend = %q, want fake", got)
	}
	if fi, err := os.Stat(fb.Path("vol")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("the backend's volume: %v, %v; want a directory with mode 0750", fi, err)
	}
	if _, err := os.Stat(filepath.Join(ts.dataRoot, volumesDir, "vol")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the store made a directory of its own: %v", err)
	}

	target := filepath.Join(ts.dir, "target")
	if _, err := ts.node.NodePublishVolume(ctx, publishRequest("vol", target)); err != nil {
		t.Fatal(err)
	}
	if got := fm.source(target); got != fb.Path("vol") {
		t.Errorf("published %q, want the backend's path %q", got, fb.Path("vol"))
	}
	fb.setUsed(300 << 10)
	stats, err := ts.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "vol", VolumePath: target})
	if err != nil {
		t.Fatal(err)
	}
	if u := stats.GetUsage(); len(u) != 1 || u[0].GetUsed() != 300<<10 || u[0].GetTotal() != 1<<20 || u[0].GetAvailable() != 1<<20-300<<10 {
		t.Errorf("usage = %v, want only bytes: 300 KiB of 1 MiB used (no inode count from this backend)", u)
	}
	if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol"}); err != nil {
		t.Fatal(err)
	}
	if got, want := fb.history(), "create vol 1048576; delete vol 0"; got != want {
		t.Errorf("backend calls: %s; want %s", got, want)
	}
}

// TestBackendFailure checks that a create the backend fails is rolled
// back through the same backend and that the error keeps its meaning.
func TestBackendFailure(t *testing.T) {
	cfg, fb, _ := fakeConfig(t)
	ts := startServer(t, cfg)
	ctx := testContext(t)
	fb.failOn("create", fmt.Errorf("%w: the file system is full", errNoSpace))
	_, err := ts.controller.CreateVolume(ctx, createRequest("vol"))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "file system is full") {
		t.Errorf("CreateVolume with the backend out of space: %v, want ResourceExhausted with the backend's reason", err)
	}
	if len(ts.Volumes()) != 0 || ts.Allocated() != 0 {
		t.Errorf("after a failed create: volumes %v, allocated %d; want none", ts.Volumes(), ts.Allocated())
	}
	if got, want := fb.history(), "create vol 1048576; delete vol 0"; got != want {
		t.Errorf("backend calls: %s; want %s (the rollback)", got, want)
	}
}

// TestBackendPerVolume starts a driver whose default backend is the fake
// on a data root (not on btrfs) that holds a record written before there
// were backends, one naming a backend this driver does not have and one
// naming btrfs. The old volume is a directory volume and stays one; the
// others are unavailable and say why; none reaches the fake.
func TestBackendPerVolume(t *testing.T) {
	cfg, fb, _ := fakeConfig(t)
	skipOnBtrfs(t, cfg.DataRoot)
	ctx := testContext(t)
	records := map[string]string{"old": "", "future": `"backend": "zfs",`, "moved": `"backend": "btrfs",`}
	for id, backendField := range records {
		if err := os.MkdirAll(filepath.Join(cfg.DataRoot, volumesDir, id), 0o777); err != nil {
			t.Fatal(err)
		}
		record := fmt.Sprintf(`{"id": %q, %s "state": "ready", "capacityBytes": 1048576, "directoryMode": "0777", "created": "2025-01-02T03:04:05Z"}`, id, backendField)
		if err := os.MkdirAll(filepath.Join(cfg.DataRoot, metaDir), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cfg.DataRoot, metaDir, id+recordExt), []byte(record), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ts := startServer(t, cfg)

	vols := ts.Volumes()
	if len(vols) != 1 || vols[0].ID != "old" || vols[0].Backend != BackendDirectory {
		t.Errorf("volumes = %+v, want only old, with backend %s", vols, BackendDirectory)
	}
	reason := ts.Unavailable()["future"]
	if !strings.Contains(reason, `backend "zfs"`) {
		t.Errorf("unavailable = %v, want future naming its backend", ts.Unavailable())
	}
	if moved := ts.Unavailable()["moved"]; !strings.Contains(moved, "not on btrfs") {
		t.Errorf("unavailable = %v, want moved saying the data root is not on btrfs", ts.Unavailable())
	}
	if ts.Allocated() != 3<<20 {
		t.Errorf("allocated = %d, want all volumes' %d: the unavailable ones' data is still there", ts.Allocated(), 3<<20)
	}
	_, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "future"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), reason) {
		t.Errorf("DeleteVolume of the unknown backend's volume: %v, want FailedPrecondition with the reason", err)
	}
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "old"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataRoot, volumesDir, "old")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the directory volume's directory after DeleteVolume: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataRoot, volumesDir, "future")); err != nil {
		t.Errorf("the unavailable volume's data: %v", err)
	}
	if h := fb.history(); h != "" {
		t.Errorf("the fake backend was called for volumes that are not its own: %s", h)
	}
}

// TestExpand checks ControllerExpandVolume: the backend gets the new size
// before the record and the node's accounting say it, sizes never shrink,
// and growth that does not fit is refused without touching the backend.
func TestExpand(t *testing.T) {
	cfg, fb, _ := fakeConfig(t)
	cfg.Capacity = 10 << 20
	ts := startServer(t, cfg)
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("vol")); err != nil {
		t.Fatal(err)
	}
	expand := func(required, limit int64) (*csi.ControllerExpandVolumeResponse, error) {
		return ts.controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
			VolumeId:      "vol",
			CapacityRange: &csi.CapacityRange{RequiredBytes: required, LimitBytes: limit},
		})
	}
	resp, err := expand(4<<20, 0)
	if err != nil || resp.GetCapacityBytes() != 4<<20 || resp.GetNodeExpansionRequired() {
		t.Errorf("expand to 4 MiB: %v, %v; want 4 MiB and no node step", resp, err)
	}
	if v := ts.Volumes()[0]; v.CapacityBytes != 4<<20 || ts.Allocated() != 4<<20 {
		t.Errorf("after expanding: record %d bytes, allocated %d; want 4 MiB both", v.CapacityBytes, ts.Allocated())
	}
	// Smaller than it is: no shrinking, the size it has is the answer.
	if resp, err := expand(2<<20, 0); err != nil || resp.GetCapacityBytes() != 4<<20 {
		t.Errorf("expand to less than the size: %v, %v; want the volume's 4 MiB", resp, err)
	}
	if _, err := expand(2<<20, 3<<20); status.Code(err) != codes.OutOfRange {
		t.Errorf("expand with a limit below the size: %v, want OutOfRange", err)
	}
	// 4 MiB of 10 are taken; growing by 7 more does not fit.
	if _, err := expand(11<<20, 0); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("expand beyond the node's capacity: %v, want ResourceExhausted", err)
	}
	fb.failOn("expand", errors.New("qgroup limit failed"))
	if _, err := expand(5<<20, 0); status.Code(err) != codes.Internal {
		t.Errorf("expand the backend fails: %v, want Internal", err)
	}
	if v := ts.Volumes()[0]; v.CapacityBytes != 4<<20 || ts.Allocated() != 4<<20 {
		t.Errorf("after refused expansions: record %d bytes, allocated %d; want 4 MiB both", v.CapacityBytes, ts.Allocated())
	}
	if got, want := fb.history(), "create vol 1048576; expand vol 4194304; expand vol 5242880"; got != want {
		t.Errorf("backend calls: %s; want %s", got, want)
	}

	for _, tc := range []struct {
		name string
		req  *csi.ControllerExpandVolumeRequest
		code codes.Code
	}{
		{"no volume ID", &csi.ControllerExpandVolumeRequest{CapacityRange: &csi.CapacityRange{RequiredBytes: 1}}, codes.InvalidArgument},
		{"no capacity range", &csi.ControllerExpandVolumeRequest{VolumeId: "vol"}, codes.InvalidArgument},
		{"only a limit", &csi.ControllerExpandVolumeRequest{VolumeId: "vol", CapacityRange: &csi.CapacityRange{LimitBytes: 8 << 20}}, codes.InvalidArgument},
		{"negative", &csi.ControllerExpandVolumeRequest{VolumeId: "vol", CapacityRange: &csi.CapacityRange{RequiredBytes: -1}}, codes.InvalidArgument},
		{"block", &csi.ControllerExpandVolumeRequest{VolumeId: "vol", CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20},
			VolumeCapability: &csi.VolumeCapability{
				AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
				AccessMode: rwo.GetAccessMode(),
			}}, codes.InvalidArgument},
		{"unknown volume", &csi.ControllerExpandVolumeRequest{VolumeId: "nope", CapacityRange: &csi.CapacityRange{RequiredBytes: 1}}, codes.NotFound},
	} {
		if _, err := ts.controller.ControllerExpandVolume(ctx, tc.req); status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}
}

// TestExpandDirectoryOnline grows a directory volume while it is published,
// as the resizer does while its pod runs: the size is bookkeeping, so the
// data and the mount stay as they are, no node step is asked for,
// NodeGetVolumeStats reports the new total, and the record keeps the size
// across a restart of the driver.
func TestExpandDirectoryOnline(t *testing.T) {
	testutil.RequireRoot(t) // bind mounts
	cfg := testConfig(t)
	cfg.Backend = BackendDirectory
	ts := startServer(t, cfg)
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("vol")); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(ts.dir, "target")
	if _, err := ts.node.NodePublishVolume(ctx, publishRequest("vol", target)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "data"), []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	resp, err := ts.controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
		VolumeId: "vol", CapacityRange: &csi.CapacityRange{RequiredBytes: 4 << 20}, VolumeCapability: rwo,
	})
	if err != nil || resp.GetCapacityBytes() != 4<<20 || resp.GetNodeExpansionRequired() {
		t.Fatalf("ControllerExpandVolume while published: %v, %v; want 4 MiB and no node step", resp, err)
	}
	if data, err := os.ReadFile(filepath.Join(target, "data")); err != nil || string(data) != "kept" || !ts.isMounted(t, "vol", target) {
		t.Errorf("after expanding: %q, %v, mounted %v; want the data through the same mount", data, err, ts.isMounted(t, "vol", target))
	}
	stats, err := ts.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "vol", VolumePath: target})
	if err != nil {
		t.Fatal(err)
	}
	if total := stats.GetUsage()[0].GetTotal(); total != 4<<20 {
		t.Errorf("NodeGetVolumeStats total = %d after expanding, want 4 MiB", total)
	}
	ts.stop()
	ts = startServer(t, cfg)
	if v := ts.Volumes(); len(v) != 1 || v[0].CapacityBytes != 4<<20 || ts.Allocated() != 4<<20 {
		t.Errorf("after a restart: volumes %+v, allocated %d; want vol with 4 MiB", v, ts.Allocated())
	}
	if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
}

// TestBackendChoice checks Config.Backend on a data root that is not on
// btrfs: auto means directory, and btrfs asked for by name is an error
// rather than directories without the limits it promises.
func TestBackendChoice(t *testing.T) {
	cfg := testConfig(t)
	skipOnBtrfs(t, filepath.Dir(cfg.DataRoot))
	cfg.Backend = BackendBtrfs
	if d, err := New(cfg); err == nil || !strings.Contains(err.Error(), "needs a data root on btrfs") {
		if err == nil {
			_ = d.Close()
		}
		t.Errorf("New with backend btrfs on another file system: %v, want an error that says why", err)
	}
	cfg.Backend = BackendAuto
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Backend() != BackendDirectory {
		t.Errorf("Backend() = %q with auto on a data root not on btrfs, want %s", d.Backend(), BackendDirectory)
	}
}

// skipOnBtrfs skips a test that needs a data root not on btrfs.
func skipOnBtrfs(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type == unix.BTRFS_SUPER_MAGIC {
		t.Skipf("%s is on btrfs; this test needs another file system", dir)
	}
}
