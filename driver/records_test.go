package driver

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestLostRemovals covers what a power loss may undo that the store does
// not sync: the removal of a creating or deleting record once the
// backend's data is durably gone. The record comes back; the next start
// must end in the same state as if it had not.
func TestLostRemovals(t *testing.T) {
	spec := volumeSpec{ID: "vol", Size: 1 << 20, Params: volumeParams{DirectoryMode: 0o770}}
	for _, tc := range []struct {
		name string
		// run leaves the data root with the volume gone, and returns the
		// record file whose removal the power loss undoes, with its
		// contents.
		run func(t *testing.T, s *store, root string) (file string, data []byte)
	}{
		{"delete", func(t *testing.T, s *store, root string) (string, []byte) {
			if _, err := s.create(spec); err != nil {
				t.Fatal(err)
			}
			var data []byte
			s.afterStep = func(step string) {
				if step == "delete:intent" {
					data = readFile(t, filepath.Join(root, metaDir, deletingPrefix+"vol"))
				}
			}
			if err := s.delete("vol"); err != nil {
				t.Fatal(err)
			}
			return deletingPrefix + "vol", data
		}},
		{"rolled-back create", func(t *testing.T, s *store, root string) (string, []byte) {
			// The backend fails after the creating record is durable;
			// create rolls back.
			var data []byte
			s.afterStep = func(step string) {
				if step == "create:intent" {
					data = readFile(t, filepath.Join(root, metaDir, creatingPrefix+"vol"))
					if err := os.WriteFile(filepath.Join(root, volumesDir, "vol"), nil, 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			if _, err := s.create(spec); err == nil {
				t.Fatal("create over a file in the volume's place succeeded")
			}
			return creatingPrefix + "vol", data
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "data")
			s := openTestStore(t, root)
			file, data := tc.run(t, s, root)
			wantVolumes(t, s, root, false)
			_ = s.close()
			// The power loss: the record is back, the data is not.
			if err := os.WriteFile(filepath.Join(root, metaDir, file), data, 0o600); err != nil {
				t.Fatal(err)
			}
			wantVolumes(t, openTestStore(t, root), root, false)
		})
	}
}

// TestRecordLayouts starts the store on records it does not write in the
// course of an operation: those of earlier versions, which kept every state
// in meta/<id>.json, a stale record of an operation next to a committed
// one, and a corrupt record of an operation.
func TestRecordLayouts(t *testing.T) {
	const committed = `{"id": "vol", "backend": "directory", "state": "ready", "capacityBytes": 1048576, "directoryMode": "0770"}`
	for _, tc := range []struct {
		name    string
		records map[string]string
		// exists: the volume is served after the start, with its data.
		exists bool
		// unavailable: the volume is set aside, its data kept.
		unavailable bool
	}{
		{"earlier version, ready", map[string]string{"vol.json": committed}, true, false},
		{"earlier version, creating", map[string]string{"vol.json": strings.Replace(committed, "ready", "creating", 1)}, false, false},
		{"earlier version, deleting", map[string]string{"vol.json": strings.Replace(committed, "ready", "deleting", 1)}, false, false},
		{"stale creating record", map[string]string{"vol.json": committed, creatingPrefix + "vol": committed}, true, false},
		{"stale deleting record", map[string]string{"vol.json": committed, deletingPrefix + "vol": committed}, true, false},
		{"corrupt creating record", map[string]string{creatingPrefix + "vol": `{"id": "vol", "cap`}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "data")
			for _, dir := range []string{volumesDir, metaDir} {
				if err := os.MkdirAll(filepath.Join(root, dir), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Mkdir(filepath.Join(root, volumesDir, "vol"), 0o770); err != nil {
				t.Fatal(err)
			}
			for name, data := range tc.records {
				if err := os.WriteFile(filepath.Join(root, metaDir, name), []byte(data), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			s := openTestStore(t, root)
			if !tc.unavailable {
				wantVolumes(t, s, root, tc.exists)
				return
			}
			if _, err := s.get("vol"); !errors.Is(err, errUnavailable) {
				t.Errorf("get: %v, want errUnavailable", err)
			}
			records := listDir(t, filepath.Join(root, metaDir))
			if len(records) != 1 || !strings.HasPrefix(records[0], "vol.json"+corruptSuffix) {
				t.Errorf("records %v, want only the set-aside vol.json.corrupt-<time>", records)
			}
			if dirs := listDir(t, filepath.Join(root, volumesDir)); !slices.Equal(dirs, []string{"vol"}) {
				t.Errorf("volume directories %v, want the unavailable volume's kept", dirs)
			}
		})
	}
}

// TestUpdateRefusesUncommitted checks that a record write for a volume
// whose create or delete is under way is refused: it would put a record
// at the committed name.
func TestUpdateRefusesUncommitted(t *testing.T) {
	root := filepath.Join(t.TempDir(), "data")
	s := openTestStore(t, root)
	spec := volumeSpec{ID: "vol", Size: 1 << 20, Params: volumeParams{DirectoryMode: 0o770}}
	crash(t, s, "create:mkdir", func() { _, _ = s.create(spec) })
	s.afterStep = nil
	if err := s.setTarget("vol", Target{Path: "/target"}); !errors.Is(err, errNotFound) {
		t.Errorf("setTarget on a volume being created: %v, want errNotFound", err)
	}
	if records := listDir(t, filepath.Join(root, metaDir)); !slices.Equal(records, []string{creatingPrefix + "vol"}) {
		t.Errorf("records %v, want only the creating record", records)
	}
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
