package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// btrfsFS is a btrfs file system made for one test.
type btrfsFS struct {
	mnt    string // where it is mounted
	sysfs  string // /sys/fs/btrfs/<fsid>
	device string // its loop device
}

// btrfsConfig is testConfig with the data root on a new btrfs file system
// (mountBtrfs).
func btrfsConfig(t *testing.T) (Config, *btrfsFS) {
	cfg := testConfig(t)
	fs := mountBtrfs(t, filepath.Dir(cfg.DataRoot))
	cfg.DataRoot = filepath.Join(fs.mnt, "data")
	return cfg, fs
}

// mountBtrfs makes a btrfs file system, a sparse 256 MiB file in dir
// attached to a loop device, and mounts it at dir/btrfs. Everything is
// unmounted and detached when the test ends, also when it fails half-way.
func mountBtrfs(t *testing.T, dir string) *btrfsFS {
	testutil.RequireRoot(t)
	mkfs := testutil.RequireCommand(t, "mkfs.btrfs")
	losetup := testutil.RequireCommand(t, "losetup")
	img, err := os.Create(filepath.Join(dir, "btrfs.img"))
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(img.Truncate(256<<20), img.Close()); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(losetup, "--find", "--show", img.Name()).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	fs := &btrfsFS{device: strings.TrimSpace(string(out)), mnt: filepath.Join(dir, "btrfs")}
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "--detach", fs.device).CombinedOutput(); err != nil {
			t.Errorf("detaching %s: %v: %s", fs.device, err, out)
		}
	})
	// Runs before the detach: the btrfs mount and the targets of its
	// volumes under dir come off first (the driver is closed before that,
	// since startServer registers its cleanup later).
	unmountUnder(t, dir)
	if out, err := exec.Command(mkfs, "-q", fs.device).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.btrfs: %v: %s", err, out)
	}
	mustMkdir(t, fs.mnt)
	if err := unix.Mount(fs.device, fs.mnt, "btrfs", 0, ""); err != nil {
		t.Fatalf("mounting %s: %v", fs.device, err)
	}
	// The file system's directory in sysfs is the one listing the device.
	matches, err := filepath.Glob(filepath.Join("/sys/fs/btrfs/*/devices", filepath.Base(fs.device)))
	if err != nil || len(matches) != 1 {
		t.Fatalf("finding %s in /sys/fs/btrfs: %v, %v", fs.device, matches, err)
	}
	fs.sysfs = filepath.Dir(filepath.Dir(matches[0]))
	return fs
}

// qgroup reads a number of qgroup 0/<id> from sysfs (referenced,
// max_referenced, ...); ok is false when the qgroup is not there.
func (fs *btrfsFS) qgroup(t *testing.T, id uint64, name string) (n int64, ok bool) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(fs.sysfs, "qgroups", fmt.Sprintf("0_%d", id), name))
	if errors.Is(err, os.ErrNotExist) {
		return 0, false
	}
	if err != nil {
		t.Fatal(err)
	}
	n, err = strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n, true
}

// commit commits the file system's transaction, which is when btrfs
// brings its qgroup counts up to date.
func (fs *btrfsFS) commit(t *testing.T) {
	t.Helper()
	f, err := os.Open(fs.mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}

// subvolumeID is the btrfs subvolume ID of the directory p, found as the
// driver finds it (BTRFS_IOC_INO_LOOKUP); sysfs is the check that it is
// right.
func subvolumeID(t *testing.T, p string) uint64 {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	args := btrfsInoLookupArgs{ObjectID: btrfsFirstFreeObjectID}
	if err := btrfsIoctl(f, ioctlInoLookup, unsafe.Pointer(&args)); err != nil {
		t.Fatalf("BTRFS_IOC_INO_LOOKUP on %s: %v", p, err)
	}
	return args.TreeID
}

// writeFile writes n bytes of non-zero data to p, fsyncs it and returns
// how much was written and the first error.
func writeFile(p string, n int) (int, error) {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	chunk := []byte(strings.Repeat("stickyvol", 1<<17)[:1<<20])
	written := 0
	for written < n && err == nil {
		var w int
		w, err = f.Write(chunk[:min(len(chunk), n-written)])
		written += w
	}
	if err == nil {
		err = f.Sync()
	}
	return written, errors.Join(err, f.Close())
}

// TestBtrfsVolume follows a volume on a btrfs data root through its life:
// the driver turns quotas on, CreateVolume makes a subvolume whose qgroup
// limit is the size and records backend btrfs, writes within the size
// succeed and beyond it fail with EDQUOT, usage is the qgroup's,
// ControllerExpandVolume raises the limit, DeleteVolume removes the
// subvolume and, once btrfs has freed it, the qgroup.
func TestBtrfsVolume(t *testing.T) {
	cfg, fs := btrfsConfig(t)
	if _, err := os.Stat(filepath.Join(fs.sysfs, "qgroups")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("quotas are on before the driver started: %v", err)
	}
	ts := startServer(t, cfg)
	ctx := testContext(t)
	if enabled, _ := os.ReadFile(filepath.Join(fs.sysfs, "qgroups", "enabled")); strings.TrimSpace(string(enabled)) != "1" {
		t.Fatalf("quotas after New: qgroups/enabled = %q, want 1", enabled)
	}
	if ts.Backend() != BackendBtrfs {
		t.Errorf("Backend() = %q on a btrfs data root, want %s", ts.Backend(), BackendBtrfs)
	}

	// (e) CreateVolume over gRPC records backend btrfs and makes a subvolume
	// whose qgroup limit is the size.
	const size = 16 << 20
	req := createRequest("vol")
	req.CapacityRange.RequiredBytes = size
	if _, err := ts.controller.CreateVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	var rec Volume
	data, err := os.ReadFile(filepath.Join(cfg.DataRoot, metaDir, "vol"+recordExt))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rec); err != nil || rec.Backend != BackendBtrfs {
		t.Errorf("record: backend %q, %v; want %s", rec.Backend, err, BackendBtrfs)
	}
	src := filepath.Join(cfg.DataRoot, volumesDir, "vol")
	var st unix.Stat_t
	if err := unix.Stat(src, &st); err != nil || st.Ino != btrfsFirstFreeObjectID || st.Mode&0o7777 != 0o777 {
		t.Errorf("volume directory: inode %d, mode %o, %v; want a subvolume's top (inode 256) with mode 0777", st.Ino, st.Mode&0o7777, err)
	}
	id := subvolumeID(t, src)
	if limit, ok := fs.qgroup(t, id, "max_referenced"); limit != size {
		t.Errorf("qgroup 0/%d max_referenced = %d (exists: %v), want %d", id, limit, ok, size)
	}

	// (a) Through the published target: within the size works, past it
	// fails with EDQUOT.
	target := filepath.Join(ts.dir, "target")
	if _, err := ts.node.NodePublishVolume(ctx, publishRequest("vol", target)); err != nil {
		t.Fatal(err)
	}
	if _, err := writeFile(filepath.Join(target, "within"), 8<<20); err != nil {
		t.Fatalf("writing 8 MiB into a 16 MiB volume: %v", err)
	}

	// (b) Usage is the qgroup's count, which btrfs updates at commits.
	fs.commit(t)
	stats, err := ts.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "vol", VolumePath: target})
	if err != nil {
		t.Fatal(err)
	}
	used := stats.GetUsage()[0].GetUsed()
	referenced, _ := fs.qgroup(t, id, "referenced")
	t.Logf("after writing 8 MiB: NodeGetVolumeStats used=%d, sysfs qgroups/0_%d/referenced=%d", used, id, referenced)
	if used != referenced || used < 8<<20 || used > 9<<20 {
		t.Errorf("used = %d, want the qgroup's referenced %d, between 8 and 9 MiB", used, referenced)
	}
	if u := stats.GetUsage(); len(u) != 1 || u[0].GetTotal() != size || u[0].GetAvailable() != size-used {
		t.Errorf("usage = %v, want bytes only, total %d, available %d", u, size, size-used)
	}

	written, err := writeFile(filepath.Join(target, "beyond"), 16<<20)
	t.Logf("writing 16 MiB more: %d bytes written, then: %v", written, err)
	if !errors.Is(err, unix.EDQUOT) {
		t.Errorf("writing past the size: %v, want EDQUOT", err)
	}

	// (c) Expanding raises the limit; the write that failed now fits.
	resp, err := ts.controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
		VolumeId: "vol", CapacityRange: &csi.CapacityRange{RequiredBytes: 48 << 20},
	})
	if err != nil || resp.GetCapacityBytes() != 48<<20 {
		t.Fatalf("ControllerExpandVolume: %v, %v", resp, err)
	}
	if limit, _ := fs.qgroup(t, id, "max_referenced"); limit != 48<<20 {
		t.Errorf("max_referenced after expanding = %d, want %d", limit, 48<<20)
	}
	if _, err := writeFile(filepath.Join(target, "after-expand"), 16<<20); err != nil {
		t.Errorf("writing 16 MiB more after expanding to 48 MiB: %v", err)
	}

	// The volume and its backend survive a restart; quotas being on
	// already is fine.
	ts.stop()
	ts = startServer(t, cfg)
	if v := ts.Volumes(); len(v) != 1 || v[0].Backend != BackendBtrfs || v[0].CapacityBytes != 48<<20 {
		t.Errorf("after a restart: %+v", v)
	}

	// (d) DeleteVolume removes the subvolume; the qgroup goes when btrfs
	// has freed the subvolume, which its cleaner does after a commit.
	if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(src); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("subvolume after DeleteVolume: %v", err)
	}
	start := time.Now()
	for {
		if _, ok := fs.qgroup(t, id, "referenced"); !ok {
			t.Logf("qgroup 0/%d gone %v after DeleteVolume", id, time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("qgroup 0/%d still there 30 s after DeleteVolume", id)
		}
		time.Sleep(100 * time.Millisecond)
		fs.commit(t)
	}
	if ts.Allocated() != 0 {
		t.Errorf("allocated after DeleteVolume = %d", ts.Allocated())
	}
}

// TestBtrfsKeepsDirectoryVolumes starts with the directory backend forced
// on a btrfs data root, then with the default: the directory volume made
// first stays a directory volume (no limit) beside a new btrfs one, and
// quotas are only turned on when btrfs is used.
func TestBtrfsKeepsDirectoryVolumes(t *testing.T) {
	cfg, fs := btrfsConfig(t)
	ctx := testContext(t)
	cfg.Backend = BackendDirectory
	ts := startServer(t, cfg)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("old")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(fs.sysfs, "qgroups")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the directory backend turned quotas on: %v", err)
	}
	ts.stop()

	cfg.Backend = ""
	ts = startServer(t, cfg)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("new")); err != nil {
		t.Fatal(err)
	}
	backends := map[string]string{}
	for _, v := range ts.Volumes() {
		backends[v.ID] = v.Backend
	}
	if backends["old"] != BackendDirectory || backends["new"] != BackendBtrfs {
		t.Errorf("backends = %v, want old %s and new %s", backends, BackendDirectory, BackendBtrfs)
	}
	for id, limited := range map[string]bool{"old": false, "new": true} {
		target := filepath.Join(ts.dir, "target-"+id)
		if _, err := ts.node.NodePublishVolume(ctx, publishRequest(id, target)); err != nil {
			t.Fatal(err)
		}
		_, err := writeFile(filepath.Join(target, "data"), 2<<20)
		if got := errors.Is(err, unix.EDQUOT); got != limited {
			t.Errorf("volume %s: writing 2 MiB into 1 MiB: %v; want EDQUOT: %v", id, err, limited)
		}
		if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Fatal(err)
		}
		if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(filepath.Join(cfg.DataRoot, volumesDir, id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("volume %s after DeleteVolume: %v", id, err)
		}
	}
}

// TestBtrfsCrashConsistency runs the crash tests of the store on data roots
// on btrfs, where each step of create and delete is a subvolume and qgroup
// change.
func TestBtrfsCrashConsistency(t *testing.T) {
	fs := mountBtrfs(t, t.TempDir())
	n := 0
	testCrashConsistency(t, BackendBtrfs, func(t *testing.T) string {
		n++
		return filepath.Join(fs.mnt, fmt.Sprintf("data-%d", n))
	})
}

// TestBtrfsSanity runs csi-sanity with the btrfs backend: its volumes of
// 10 GiB are qgroup limits, which need no room on the small file system.
// It runs in a child process (runInSanityChild); the checks that skip or
// fail it run here, in the parent, so that CI=true cannot pass by a skip in
// the child.
func TestBtrfsSanity(t *testing.T) {
	if inSanityChild() {
		cfg, _ := btrfsConfig(t)
		runSanity(t, cfg)
		return
	}
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "mkfs.btrfs")
	testutil.RequireCommand(t, "losetup")
	runInSanityChild(t)
}

// TestBtrfsDeleteNested deletes a volume in which a pod made subvolumes
// of its own, one inside another, as any user may: btrfs will not delete
// a subvolume that holds others, so the driver deletes them first.
func TestBtrfsDeleteNested(t *testing.T) {
	cfg, fs := btrfsConfig(t)
	ts := startServer(t, cfg)
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("vol")); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(ts.dir, "target")
	if _, err := ts.node.NodePublishVolume(ctx, publishRequest("vol", target)); err != nil {
		t.Fatal(err)
	}
	makeSubvolume(t, target, "outer")
	mustMkdir(t, filepath.Join(target, "outer", "dir"))
	makeSubvolume(t, filepath.Join(target, "outer", "dir"), "inner")
	if _, err := writeFile(filepath.Join(target, "outer", "dir", "inner", "data"), 64<<10); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol"}); err != nil {
		t.Fatalf("DeleteVolume of a volume holding subvolumes: %v", err)
	}
	top, err := os.Open(fs.mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer top.Close()
	if left, err := childSubvolumes(top, btrfsTopSubvolume); err != nil || len(left) != 0 {
		t.Errorf("subvolumes left on the file system: %v, %v", left, err)
	}
}

// makeSubvolume makes subvolume name in dir, as a pod could.
func makeSubvolume(t *testing.T, dir, name string) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var args btrfsVolArgs
	copy(args.Name[:], name)
	if err := btrfsIoctl(f, ioctlSubvolCreate, unsafe.Pointer(&args)); err != nil {
		t.Fatalf("making subvolume %s in %s: %v", name, dir, err)
	}
}
