package driver

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

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
	if err := m.BindMount(other, target, 0); err != nil {
		t.Fatal(err)
	}
	check("another directory mounted", true, false)
	if err := m.Unmount(target); err != nil {
		t.Fatal(err)
	}
	if err := m.BindMount(src, target, unix.MS_RDONLY); err != nil {
		t.Fatal(err)
	}
	check("source mounted", true, true)
	if err := m.Remount(target, unix.MS_RDONLY); err != nil {
		t.Errorf("Remount read-only on a read-only mount: %v", err)
	}
	if err := m.Unmount(target); err != nil {
		t.Fatal(err)
	}
	check("unmounted", false, false)
	if mp, ours, err := m.Mounted(filepath.Join(dir, "missing"), src); mp || ours || err != nil {
		t.Errorf("missing target: %v, %v, %v; want not mounted, no error", mp, ours, err)
	}
}

// TestUnixMounterKeepsFlags checks that flags given to a bind mount add to
// those of the mount its source is on: a bind remount clears every flag it
// is not given, so Remount must pass the source's again.
func TestUnixMounterKeepsFlags(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	unmountUnder(t, dir)
	fsDir, target := filepath.Join(dir, "fs"), filepath.Join(dir, "target")
	mustMkdir(t, fsDir)
	mustMkdir(t, target)
	if err := unix.Mount("tmpfs", fsDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOATIME, "size=1m"); err != nil {
		t.Fatalf("mounting a tmpfs: %v", err)
	}
	src := filepath.Join(fsDir, "src")
	mustMkdir(t, src)
	m := NewMounter()
	if err := m.BindMount(src, target, unix.MS_NOEXEC); err != nil {
		t.Fatal(err)
	}
	want := uint64(unix.ST_NOSUID | unix.ST_NODEV | unix.ST_NOATIME | unix.ST_NOEXEC)
	if got := statfsFlags(t, target); got&want != want || got&unix.ST_RDONLY != 0 {
		t.Errorf("target flags = %#x, want %#x (the source's and noexec) and writable", got, want)
	}
	if got := statfsFlags(t, src); got&unix.ST_NOEXEC != 0 {
		t.Errorf("source flags = %#x: noexec reached the source's mount", got)
	}
	// An atime option replaces the source's atime behaviour.
	if err := m.Remount(target, unix.MS_NOEXEC|unix.MS_STRICTATIME); err != nil {
		t.Fatal(err)
	}
	if got := statfsFlags(t, target); got&unix.ST_NOATIME != 0 || got&unix.ST_NOSUID == 0 {
		t.Errorf("target flags after strictatime = %#x, want nosuid kept and noatime gone", got)
	}
}

func statfsFlags(tb testing.TB, p string) uint64 {
	tb.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		tb.Fatal(err)
	}
	return uint64(st.Flags)
}

// TestUnixMounterFlagsPropagate checks that the flags reach the copies of
// the mount that propagation makes, which is how kubelet and the container
// runtime see what the node plugin mounts from its own mount namespace. A
// peer group in one namespace shows the same: a remount after the bind
// would change only the mount made here, not its copy in the peer.
func TestUnixMounterFlagsPropagate(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	unmountUnder(t, dir)
	shared, peer, src := filepath.Join(dir, "shared"), filepath.Join(dir, "peer"), filepath.Join(dir, "src")
	for _, p := range []string{shared, peer, src} {
		mustMkdir(t, p)
	}
	for _, step := range []struct {
		source, target string
		flags          uintptr
	}{
		{shared, shared, unix.MS_BIND},
		{"", shared, unix.MS_SHARED},
		{shared, peer, unix.MS_BIND},
	} {
		if err := unix.Mount(step.source, step.target, "", step.flags, ""); err != nil {
			t.Fatalf("setting up a peer group: mount %s at %s: %v", step.source, step.target, err)
		}
	}
	mustMkdir(t, filepath.Join(shared, "t"))
	m := NewMounter()
	if err := m.BindMount(src, filepath.Join(shared, "t"), unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NOEXEC); err != nil {
		t.Fatal(err)
	}
	want := uint64(unix.ST_RDONLY | unix.ST_NOSUID | unix.ST_NOEXEC)
	for _, p := range []string{filepath.Join(shared, "t"), filepath.Join(peer, "t")} {
		if mp, ours, err := m.Mounted(p, src); !mp || !ours || err != nil {
			t.Fatalf("%s: Mounted = %v, %v, %v; want the source mounted", p, mp, ours, err)
		}
		if got := statfsFlags(t, p); got&want != want {
			t.Errorf("%s: flags %#x, want ro, nosuid and noexec (%#x)", p, got, want)
		}
	}
	// Unmounting one propagates to the other, so unmountUnder must not
	// find both.
	if err := m.Unmount(filepath.Join(shared, "t")); err != nil {
		t.Fatal(err)
	}
}
