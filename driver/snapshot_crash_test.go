package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestSnapshotCrashConsistency interrupts snapshots being taken, deleted
// and restored after each durable step, as a crash would, on directory
// volumes.
func TestSnapshotCrashConsistency(t *testing.T) {
	testSnapshotCrash(t, func(t *testing.T) string { return filepath.Join(t.TempDir(), "data") })
}

// TestBtrfsSnapshotCrashConsistency is TestSnapshotCrashConsistency on
// btrfs, where a snapshot left without a record is a read-only subvolume,
// which only a subvolume delete removes.
func TestBtrfsSnapshotCrashConsistency(t *testing.T) {
	fs := mountBtrfs(t, t.TempDir())
	n := 0
	testSnapshotCrash(t, func(t *testing.T) string {
		n++
		return filepath.Join(fs.mnt, fmt.Sprintf("data-%d", n))
	})
}

// testSnapshotCrash checks that both a restart and a retry in the same
// process end in a clean state after each crash: the snapshot whole (data,
// record, capacity) or gone without a trace, and a restored volume made
// whole or rolled back with its snapshot untouched.
func testSnapshotCrash(t *testing.T, newRoot func(t *testing.T) string) {
	// setup makes volume src holding a file, on a new data root.
	setup := func(t *testing.T) (*store, string, Volume) {
		root := newRoot(t)
		s := openTestStore(t, root)
		src, err := s.create(volumeSpec{ID: "src", Size: 1 << 20, Params: volumeParams{DirectoryMode: 0o750}})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, volumesDir, "src", "data"), []byte("source"), 0o600); err != nil {
			t.Fatal(err)
		}
		return s, root, src
	}
	// after returns the store to check after a crash: the same one
	// (retry) or a new one on the same data root (restart).
	after := func(t *testing.T, s *store, root string, restart bool) *store {
		s.afterStep = nil
		if !restart {
			return s
		}
		_ = s.close()
		return openTestStore(t, root)
	}
	for _, tc := range []struct {
		step    string
		created bool // the record was durable: the snapshot is made
	}{
		{"snapshot:data", false},
		{"snapshot:commit", true},
	} {
		for _, restart := range []bool{true, false} {
			t.Run(fmt.Sprintf("create/%s/restart=%v", tc.step, restart), func(t *testing.T) {
				s, root, src := setup(t)
				crash(t, s, tc.step, func() { _, _ = s.createSnapshot("snap", src) })
				s = after(t, s, root, restart)
				exists := tc.created
				if !restart {
					// A retry finishes the job whatever the step.
					if _, err := s.createSnapshot("snap", src); err != nil {
						t.Fatalf("retried CreateSnapshot: %v", err)
					}
					exists = true
				}
				wantSnapshot(t, s, root, exists)
			})
		}
	}
	for _, step := range []string{"snapshot:unrecord", "snapshot:undata"} {
		for _, restart := range []bool{true, false} {
			t.Run(fmt.Sprintf("delete/%s/restart=%v", step, restart), func(t *testing.T) {
				s, root, src := setup(t)
				if _, err := s.createSnapshot("snap", src); err != nil {
					t.Fatal(err)
				}
				crash(t, s, step, func() { _ = s.deleteSnapshot("snap") })
				s = after(t, s, root, restart)
				if !restart {
					if err := s.deleteSnapshot("snap"); err != nil {
						t.Fatalf("retried DeleteSnapshot: %v", err)
					}
				}
				wantSnapshot(t, s, root, false)
			})
		}
	}
	for _, step := range []string{"create:intent", "create:mkdir"} {
		for _, restart := range []bool{true, false} {
			t.Run(fmt.Sprintf("restore/%s/restart=%v", step, restart), func(t *testing.T) {
				s, root, src := setup(t)
				sn, err := s.createSnapshot("snap", src)
				if err != nil {
					t.Fatal(err)
				}
				spec := volumeSpec{ID: "vol", Size: 1 << 20, Params: volumeParams{DirectoryMode: 0o750}, Snapshot: "snap", snapshot: &sn}
				crash(t, s, step, func() { _, _ = s.create(spec) })
				s = after(t, s, root, restart)
				if !restart {
					if _, err := s.create(spec); err != nil {
						t.Fatalf("retried restore: %v", err)
					}
				}
				_, err = s.get("vol")
				if restart != errors.Is(err, errNotFound) {
					t.Errorf("restored volume after the crash: %v (restart %v)", err, restart)
				}
				if !restart {
					if data, err := os.ReadFile(filepath.Join(root, volumesDir, "vol", "data")); err != nil || string(data) != "source" {
						t.Errorf("retried restore holds %q, %v", data, err)
					}
				}
				wantSnapshot(t, s, root, true)
			})
		}
	}
}

// wantSnapshot checks that snapshot "snap" of volume src is whole
// (data holding src's file, record, 1 MiB reserved besides src's on a
// copy) or gone (nothing in snapshots/, nothing reserved for it).
func wantSnapshot(t *testing.T, s *store, root string, exists bool) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, snapshotsDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sn, found := s.snapshot("snap")
	charge := int64(0)
	if found {
		charge = sn.charge()
	}
	vols := int64(0)
	for _, v := range s.list() {
		vols += v.CapacityBytes
	}
	if !exists {
		if len(names) != 0 || found || s.allocated != vols {
			t.Errorf("want no snapshot: snapshots/ %v, found %v, allocated %d (volumes %d)", names, found, s.allocated, vols)
		}
		return
	}
	if !slices.Equal(names, []string{snapshotRecordPrefix + "snap" + recordExt, "snap"}) || !found || s.allocated != vols+charge {
		t.Errorf("want the snapshot: snapshots/ %v, found %v, allocated %d (volumes %d, snapshot %d)", names, found, s.allocated, vols, charge)
	}
	if data, err := os.ReadFile(filepath.Join(root, snapshotsDir, "snap", "data")); err != nil || string(data) != "source" {
		t.Errorf("snapshot holds %q, %v", data, err)
	}
}

// TestSnapshotRecordsAtStart: a record without data is dropped, an
// unreadable record makes its snapshot unavailable with its data kept,
// and a temporary record is removed.
func TestSnapshotRecordsAtStart(t *testing.T) {
	root := filepath.Join(t.TempDir(), "data")
	s := openTestStore(t, root)
	src, err := s.create(volumeSpec{ID: "src", Size: 1 << 20, Params: volumeParams{DirectoryMode: 0o750}})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"lost", "bad", "good"} {
		if _, err := s.createSnapshot(id, src); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.close()
	dir := filepath.Join(root, snapshotsDir)
	if err := os.RemoveAll(filepath.Join(dir, "lost")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, snapshotRecordPrefix+"bad"+recordExt), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, tmpPrefix+"good"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = openTestStore(t, root)
	if _, ok := s.snapshot("lost"); ok {
		t.Error("a snapshot without data is still listed")
	}
	if _, ok := s.snapshot("good"); !ok {
		t.Error("the good snapshot is gone")
	}
	if err := s.deleteSnapshot("bad"); !errors.Is(err, errUnavailable) {
		t.Errorf("deleting a snapshot whose record is unreadable: %v, want errUnavailable", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad")); err != nil {
		t.Errorf("the data of a snapshot whose record is unreadable: %v", err)
	}
	want := []string{snapshotRecordPrefix + "bad" + recordExt, snapshotRecordPrefix + "good" + recordExt, "bad", "good"}
	if got := listDir(t, dir); !slices.Equal(got, want) {
		t.Errorf("snapshots/ %v, want %v", got, want)
	}
	if s.allocated != 2<<20 {
		t.Errorf("allocated %d, want the volume's and the good snapshot's %d", s.allocated, 2<<20)
	}
}
