package driver

import (
	"path/filepath"
	"testing"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// TestUnixMounter checks the real mounter on a bind mount of a directory
// of the same file system, the case comparing st_dev cannot see.
func TestUnixMounter(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	unmountUnder(t, dir)
	src, other, target := filepath.Join(dir, "src"), filepath.Join(dir, "other"), filepath.Join(dir, "target")
	for _, p := range []string{src, other, target} {
		mustMkdir(t, p)
	}
	m := NewMounter()
	check := func(what string, wantMountPoint, wantOurs bool) {
		t.Helper()
		mp, ours, err := m.Mounted(target, src)
		if err != nil || mp != wantMountPoint || ours != wantOurs {
			t.Errorf("%s: Mounted = %v, %v, %v; want %v, %v", what, mp, ours, err, wantMountPoint, wantOurs)
		}
	}
	check("plain directory", false, false)
	if err := m.BindMount(other, target, false); err != nil {
		t.Fatal(err)
	}
	check("another directory mounted", true, false)
	if err := m.Unmount(target); err != nil {
		t.Fatal(err)
	}
	if err := m.BindMount(src, target, true); err != nil {
		t.Fatal(err)
	}
	check("source mounted", true, true)
	if err := m.RemountReadOnly(target); err != nil {
		t.Errorf("RemountReadOnly on a read-only mount: %v", err)
	}
	if err := m.Unmount(target); err != nil {
		t.Fatal(err)
	}
	check("unmounted", false, false)
	if mp, ours, err := m.Mounted(filepath.Join(dir, "missing"), src); mp || ours || err != nil {
		t.Errorf("missing target: %v, %v, %v; want not mounted, no error", mp, ours, err)
	}
}
