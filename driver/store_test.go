package driver

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// TestRestart stops the driver with a volume published and starts a new one
// on the same data root: everything is still there and the calls kubelet
// and the provisioner repeat get the same answers. Then it simulates a node
// reboot (the mount is gone, the records are not).
func TestRestart(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := testConfig(t)
	cfg.Capacity = 10 << 20
	ts := startServer(t, cfg)
	ctx := testContext(t)
	rwop := mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)
	createA := createRequest("vol-a")
	createA.Parameters = map[string]string{"csi.storage.k8s.io/pvc/name": "data-db-0"}
	for _, req := range []*csi.CreateVolumeRequest{createA, createRequest("vol-b")} {
		if _, err := ts.controller.CreateVolume(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	target := filepath.Join(ts.dir, "target")
	publishA := &csi.NodePublishVolumeRequest{VolumeId: "vol-a", TargetPath: target, VolumeCapability: rwop}
	if _, err := ts.node.NodePublishVolume(ctx, publishA); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "kept"), []byte("yes"), 0o644); err != nil {
		t.Fatal(err)
	}
	ts.stop()

	ts = startServer(t, cfg)
	list, err := ts.controller.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.GetEntries()); n != 2 {
		t.Errorf("ListVolumes after restart: %d volumes, want 2", n)
	}
	if a := ts.Allocated(); a != 2<<20 {
		t.Errorf("allocated after restart = %d, want %d", a, 2<<20)
	}
	capResp, err := ts.controller.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil || capResp.GetAvailableCapacity() != 8<<20 {
		t.Errorf("GetCapacity after restart = %v, %v; want %d", capResp.GetAvailableCapacity(), err, 8<<20)
	}
	if _, err := ts.controller.CreateVolume(ctx, createA); err != nil {
		t.Errorf("repeated CreateVolume after restart: %v", err)
	}
	if _, err := ts.node.NodePublishVolume(ctx, publishA); err != nil {
		t.Errorf("repeated NodePublishVolume after restart: %v", err)
	}
	// The restarted driver still knows where the RWOP volume is mounted.
	publishElsewhere := &csi.NodePublishVolumeRequest{VolumeId: "vol-a", TargetPath: target + "2", VolumeCapability: rwop}
	if _, err := ts.node.NodePublishVolume(ctx, publishElsewhere); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("second RWOP target after restart: %v, want FailedPrecondition", err)
	}
	if got := ts.Volumes()[0]; got.PVCName != "data-db-0" || len(got.Targets) != 1 {
		t.Errorf("record after restart = %+v", got)
	}
	ts.stop()

	// Node reboot: the mount is gone, the record still lists the target.
	if err := NewMounter().Unmount(target); err != nil {
		t.Fatal(err)
	}
	ts = startServer(t, cfg)
	if _, err := ts.node.NodePublishVolume(ctx, publishA); err != nil {
		t.Fatalf("NodePublishVolume after reboot: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(target, "kept"))
	if err != nil || string(data) != "yes" {
		t.Errorf("data after reboot and publish: %q, %v", data, err)
	}
}

// TestCrashConsistency interrupts CreateVolume and DeleteVolume after each
// durable step, as a crash would (nothing after the step runs, not even
// error handling), and checks that both a retry in the same process and a
// restart end in a clean state: the volume fully there or fully gone, the
// capacity accounted accordingly.
func TestCrashConsistency(t *testing.T) {
	testCrashConsistency(t, BackendDirectory, func(t *testing.T) string { return filepath.Join(t.TempDir(), "data") })
}

// testCrashConsistency is TestCrashConsistency on the data roots newRoot
// returns, one per subtest, where new volumes get backend wantBackend.
func testCrashConsistency(t *testing.T, wantBackend string, newRoot func(t *testing.T) string) {
	spec := volumeSpec{ID: "vol", Size: 1 << 20, Params: volumeParams{DirectoryMode: 0o770}}
	if wantBackend == BackendImage {
		spec.Params.Image, spec.Params.FsType = true, DefaultFsType
	}
	for _, tc := range []struct {
		step string
		// created: after the crash, the volume counts as made (the
		// commit was durable); otherwise it must be rolled back.
		created bool
	}{
		{"create:intent", false},
		{"create:mkdir", false},
		{"create:commit", true},
	} {
		t.Run(tc.step+"/restart", func(t *testing.T) {
			root := newRoot(t)
			s := openTestStore(t, root)
			crash(t, s, tc.step, func() { _, _ = s.create(spec) })
			// The process is gone, and with it its lock on the data
			// root; a new store starts on the same data root.
			_ = s.close()
			restarted := openTestStore(t, root)
			wantVolumes(t, restarted, root, tc.created)
		})
		t.Run(tc.step+"/retry", func(t *testing.T) {
			// A retry in the crashed process (no restart) finishes too.
			root := newRoot(t)
			s := openTestStore(t, root)
			crash(t, s, tc.step, func() { _, _ = s.create(spec) })
			s.afterStep = nil
			v, err := s.create(spec)
			if err != nil {
				t.Fatalf("retried create: %v", err)
			}
			if v.Backend != wantBackend {
				t.Errorf("backend %q, want %q", v.Backend, wantBackend)
			}
			wantVolumes(t, s, root, true)
		})
	}
	for _, step := range []string{"delete:intent", "delete:rmdir", "delete:record"} {
		crashedDelete := func(t *testing.T) (*store, string) {
			root := newRoot(t)
			s := openTestStore(t, root)
			if _, err := s.create(spec); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, volumesDir, "vol", "data"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			crash(t, s, step, func() { _ = s.delete("vol") })
			return s, root
		}
		t.Run(step+"/restart", func(t *testing.T) {
			s, root := crashedDelete(t)
			_ = s.close()
			restarted := openTestStore(t, root)
			wantVolumes(t, restarted, root, false)
		})
		t.Run(step+"/retry", func(t *testing.T) {
			s, root := crashedDelete(t)
			s.afterStep = nil
			if err := s.delete("vol"); err != nil {
				t.Fatalf("retried delete: %v", err)
			}
			wantVolumes(t, s, root, false)
		})
	}
}

// errCrash is what the step hook panics with to stop an operation dead.
var errCrash = errors.New("simulated crash")

// crash runs op with a hook that stops it right after step.
func crash(t *testing.T, s *store, step string, op func()) {
	t.Helper()
	s.afterStep = func(got string) {
		if got == step {
			panic(errCrash)
		}
	}
	crashed := false
	func() {
		defer func() {
			if r := recover(); r != nil {
				if err, _ := r.(error); !errors.Is(err, errCrash) {
					panic(r)
				}
				crashed = true
			}
		}()
		op()
	}()
	if !crashed {
		t.Fatalf("the operation never reached step %s", step)
	}
}

func openTestStore(t *testing.T, root string) *store {
	t.Helper()
	s, err := openStore(klog.FromContext(testContext(t)), storeConfig{RootPath: root, Holder: "test", Capacity: 10 << 20})
	if err != nil {
		t.Fatalf("openStore: %v", err)
	}
	t.Cleanup(func() { _ = s.close() })
	return s
}

// wantVolumes checks that the volume "vol" is fully there (directory,
// ready record, 1 MiB allocated) or fully gone (neither, 0 allocated), and
// that no temporary file is left.
func wantVolumes(t *testing.T, s *store, root string, exists bool) {
	t.Helper()
	dirs := listDir(t, filepath.Join(root, volumesDir))
	records := listDir(t, filepath.Join(root, metaDir))
	_, err := s.get("vol")
	// Image volumes keep their image there; the others make no images/.
	if images, ierr := os.ReadDir(filepath.Join(root, imagesDir)); ierr == nil && len(images) > 0 &&
		(!exists || len(images) > 1 || images[0].Name() != "vol") {
		t.Errorf("images left: %d, first %s", len(images), images[0].Name())
	}
	if exists {
		if !slices.Equal(dirs, []string{"vol"}) || !slices.Equal(records, []string{"vol.json"}) || err != nil || s.allocated != 1<<20 {
			t.Errorf("want the volume: dirs %v, records %v, get: %v, allocated %d", dirs, records, err, s.allocated)
		}
		return
	}
	if len(dirs) != 0 || len(records) != 0 || !errors.Is(err, errNotFound) || s.allocated != 0 {
		t.Errorf("want no volume: dirs %v, records %v, get: %v, allocated %d", dirs, records, err, s.allocated)
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestStartupChecks covers what New finds on disk that it did not leave in
// a consistent state itself.
func TestStartupChecks(t *testing.T) {
	root := filepath.Join(t.TempDir(), "data")
	s := openTestStore(t, root)
	if _, err := s.create(volumeSpec{ID: "vol", Size: 1, Params: volumeParams{DirectoryMode: 0o777}}); err != nil {
		t.Fatal(err)
	}
	// A temporary record from an interrupted write is removed.
	tmp := filepath.Join(root, metaDir, tmpPrefix+"vol")
	if err := os.WriteFile(tmp, []byte(`{"id":`), 0o600); err != nil {
		t.Fatal(err)
	}
	// A directory without a record is data of unknown origin: kept, and a
	// volume of that name is refused rather than handed out with it.
	orphan := filepath.Join(root, volumesDir, "orphan")
	if err := os.MkdirAll(orphan, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(orphan, "precious"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = s.close()
	s = openTestStore(t, root)
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary record still there: %v", err)
	}
	if _, err := s.get("vol"); err != nil {
		t.Errorf("volume lost: %v", err)
	}
	_, err := s.create(volumeSpec{ID: "orphan", Size: 1, Params: volumeParams{DirectoryMode: 0o777}})
	if !errors.Is(err, errOrphanDir) {
		t.Errorf("create over an orphan directory: %v, want errOrphanDir", err)
	}
	if _, err := os.Stat(filepath.Join(orphan, "precious")); err != nil {
		t.Errorf("orphan data touched: %v", err)
	}

	// A second agent on the same data root is refused, naming the holder.
	if _, err := openStore(klog.FromContext(testContext(t)), storeConfig{RootPath: root, Holder: "node node-b"}); !errors.Is(err, errInUse) ||
		!strings.Contains(err.Error(), "held by test, pid") {
		t.Errorf("a second store on a data root in use: %v, want errInUse naming the holder", err)
	}
	_ = s.close()

	// A corrupt record is set aside, its volume unavailable and its
	// directory kept; the other volumes are served.
	if err := os.MkdirAll(filepath.Join(root, volumesDir, "bad"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, volumesDir, "bad", "precious"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, metaDir, "bad.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	for restart := range 2 {
		s = openTestStore(t, root)
		if _, err := s.get("vol"); err != nil {
			t.Errorf("start %d: the good volume is not served: %v", restart, err)
		}
		reason := s.unavailableVolumes()["bad"]
		if !strings.Contains(reason, "bad.json.corrupt-") {
			t.Errorf("start %d: unavailable %v, want bad naming its set-aside record", restart, s.unavailableVolumes())
		}
		if _, err := s.get("bad"); !errors.Is(err, errUnavailable) || !strings.Contains(err.Error(), reason) {
			t.Errorf("start %d: get: %v", restart, err)
		}
		if err := s.delete("bad"); !errors.Is(err, errUnavailable) {
			t.Errorf("start %d: delete of an unavailable volume: %v, want refused", restart, err)
		}
		if _, err := s.create(volumeSpec{ID: "bad", Size: 1, Params: volumeParams{DirectoryMode: 0o777}}); !errors.Is(err, errUnavailable) {
			t.Errorf("start %d: create over an unavailable volume: %v, want refused", restart, err)
		}
		if _, err := os.Stat(filepath.Join(root, volumesDir, "bad", "precious")); err != nil {
			t.Errorf("start %d: the unavailable volume's data: %v", restart, err)
		}
		if code := status.Code(statusFor(errUnavailable, "publishing")); code != codes.FailedPrecondition {
			t.Errorf("an unavailable volume maps to %s, want FailedPrecondition", code)
		}
		_ = s.close()
	}
	if records := listDir(t, filepath.Join(root, metaDir)); len(records) != 2 || records[0] == "bad.json" {
		t.Errorf("records %v, want vol.json and the set-aside bad.json.corrupt-<time>", records)
	}
}
