package driver

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
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

// cloneRequest is req as a clone of volume src.
func cloneRequest(req *csi.CreateVolumeRequest, src string) *csi.CreateVolumeRequest {
	req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src}}}
	return req
}

// treeSum hashes what a person would compare of a tree: every name, type,
// mode, owner, link target and file content (mtimes too for files).
func treeSum(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "lost+found" || strings.HasPrefix(rel, "lost+found/") {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %o %d:%d\n", rel, st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "-> %s\n", target)
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%d %d %x\n", st.Mtim.Sec, st.Mtim.Nsec, sha256.Sum256(data))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// fillTree writes what copyTree must keep: files (one sparse), a
// directory with its own mode and owner, a symlink, a hard link and a
// FIFO.
func fillTree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "a.txt"), []byte("hello"), 0o640))
	must(os.Mkdir(filepath.Join(dir, "sub"), 0o711))
	must(os.WriteFile(filepath.Join(dir, "sub", "b"), []byte(strings.Repeat("b", 100000)), 0o600))
	must(os.Chown(filepath.Join(dir, "sub"), 1000, 2000))
	must(os.Symlink("../a.txt", filepath.Join(dir, "sub", "link")))
	must(os.Link(filepath.Join(dir, "a.txt"), filepath.Join(dir, "hard")))
	must(unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600))
	f, err := os.Create(filepath.Join(dir, "sparse"))
	must(err)
	_, err = f.WriteAt([]byte("end"), 64<<20)
	must(errors.Join(err, f.Close()))
}

// TestCloneDirectory clones a directory volume: the clone holds the same
// tree (modes, owners, links, a FIFO, a sparse file that stays sparse),
// reports its source, and is independent of it afterwards; the
// refusals leave nothing behind.
func TestCloneDirectory(t *testing.T) {
	testutil.RequireRoot(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("src")); err != nil {
		t.Fatal(err)
	}
	srcDir := filepath.Join(ts.dataRoot, volumesDir, "src")
	fillTree(t, srcDir)
	want := treeSum(t, srcDir)

	resp, err := ts.controller.CreateVolume(ctx, cloneRequest(createRequest("clone"), "src"))
	if err != nil {
		t.Fatalf("clone: %v", err)
	}
	if got := resp.GetVolume().GetContentSource().GetVolume().GetVolumeId(); got != "src" {
		t.Errorf("content source %q, want src", got)
	}
	cloneDir := filepath.Join(ts.dataRoot, volumesDir, "clone")
	if got := treeSum(t, cloneDir); got != want {
		t.Errorf("clone's tree differs from its source's")
	}
	var a, b unix.Stat_t
	if err := errors.Join(unix.Stat(filepath.Join(cloneDir, "a.txt"), &a), unix.Stat(filepath.Join(cloneDir, "hard"), &b)); err != nil || a.Ino != b.Ino {
		t.Errorf("hard link not kept: %v, inodes %d, %d", err, a.Ino, b.Ino)
	}
	var sp unix.Stat_t
	if err := unix.Stat(filepath.Join(cloneDir, "sparse"), &sp); err != nil || sp.Blocks*512 > 1<<20 {
		t.Errorf("sparse file copied whole: %v, %d blocks", err, sp.Blocks)
	}

	// Independent: a write to the clone leaves the source as it was.
	if err := os.WriteFile(filepath.Join(cloneDir, "a.txt"), []byte("changed"), 0o640); err != nil {
		t.Fatal(err)
	}
	if got := treeSum(t, srcDir); got != want {
		t.Errorf("writing to the clone changed its source")
	}

	// A repeat is the same volume; another source or none is not.
	if _, err := ts.controller.CreateVolume(ctx, cloneRequest(createRequest("clone"), "src")); err != nil {
		t.Errorf("repeated clone: %v", err)
	}
	if _, err := ts.controller.CreateVolume(ctx, createRequest("other")); err != nil {
		t.Fatal(err)
	}
	for name, req := range map[string]*csi.CreateVolumeRequest{
		"other source": cloneRequest(createRequest("clone"), "other"),
		"no source":    createRequest("clone"),
		"a source now": cloneRequest(createRequest("other"), "src"),
	} {
		if _, err := ts.controller.CreateVolume(ctx, req); status.Code(err) != codes.AlreadyExists {
			t.Errorf("%s: %v, want AlreadyExists", name, err)
		}
	}

	// Larger than the source: the size asked for.
	big := createRequest("big")
	big.CapacityRange.RequiredBytes = 3 << 20
	if resp, err := ts.controller.CreateVolume(ctx, cloneRequest(big, "src")); err != nil || resp.GetVolume().GetCapacityBytes() != 3<<20 {
		t.Errorf("larger clone: %v, %d bytes", err, resp.GetVolume().GetCapacityBytes())
	}
	// No size: the source's.
	noSize := createRequest("nosize")
	noSize.CapacityRange = nil
	if resp, err := ts.controller.CreateVolume(ctx, cloneRequest(noSize, "src")); err != nil || resp.GetVolume().GetCapacityBytes() != 1<<20 {
		t.Errorf("clone without a size: %v, %d bytes", err, resp.GetVolume().GetCapacityBytes())
	}

	before := listDir(t, filepath.Join(ts.dataRoot, volumesDir))
	small := createRequest("small")
	small.CapacityRange = &csi.CapacityRange{RequiredBytes: 1 << 19, LimitBytes: 1 << 19}
	image := createRequest("image")
	image.Parameters = map[string]string{ParamVolumeType: VolumeTypeImage}
	block := createRequest("block")
	block.VolumeCapabilities = []*csi.VolumeCapability{blockCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}
	pool := createRequest("pool")
	pool.Parameters = map[string]string{ParamPool: "elsewhere"}
	snapshot := createRequest("snap")
	snapshot.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "snap-1"}}}
	for _, tc := range []struct {
		name string
		req  *csi.CreateVolumeRequest
		want codes.Code
	}{
		{"smaller than the source", cloneRequest(small, "src"), codes.OutOfRange},
		{"missing source", cloneRequest(createRequest("orphan"), "nothing"), codes.NotFound},
		{"image class, directory source", cloneRequest(image, "src"), codes.InvalidArgument},
		{"block clone of a mount volume", cloneRequest(block, "src"), codes.InvalidArgument},
		{"pool this node lacks", cloneRequest(pool, "src"), codes.ResourceExhausted},
		{"itself", cloneRequest(createRequest("self"), "self"), codes.InvalidArgument},
		{"missing snapshot", snapshot, codes.NotFound},
	} {
		if _, err := ts.controller.CreateVolume(ctx, tc.req); status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
	if after := listDir(t, filepath.Join(ts.dataRoot, volumesDir)); len(after) != len(before) {
		t.Errorf("refused clones left directories: %v, before %v", after, before)
	}
}

// TestCloneHoldsSource: while a clone copies, its source is locked, so a
// DeleteVolume of it is answered Aborted rather than pulling the data
// from under the copy.
func TestCloneHoldsSource(t *testing.T) {
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("src")); err != nil {
		t.Fatal(err)
	}
	st := ts.pools.byName[DefaultPool]
	var once sync.Once
	st.afterStep = func(step string) {
		if step != "create:intent" {
			return
		}
		once.Do(func() {
			_, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "src"})
			if status.Code(err) != codes.Aborted {
				t.Errorf("DeleteVolume of the source during the clone: %v, want Aborted", err)
			}
		})
	}
	if _, err := ts.controller.CreateVolume(ctx, cloneRequest(createRequest("clone"), "src")); err != nil {
		t.Fatal(err)
	}
	st.afterStep = nil
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "src"}); err != nil {
		t.Errorf("DeleteVolume of the source after the clone: %v", err)
	}
	if _, err := os.Stat(filepath.Join(ts.dataRoot, volumesDir, "clone")); err != nil {
		t.Errorf("the clone went with its source: %v", err)
	}
}

// TestCloneCrashConsistency: a clone interrupted before its commit is
// rolled back at start, or by a retry, and its source is untouched.
func TestCloneCrashConsistency(t *testing.T) {
	for _, step := range []string{"create:intent", "create:mkdir"} {
		for _, restart := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/restart=%v", step, restart), func(t *testing.T) {
				root := t.TempDir()
				s := openTestStore(t, root)
				src, err := s.create(volumeSpec{ID: "src", Size: 1 << 20, Params: volumeParams{DirectoryMode: 0o750}})
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(root, volumesDir, "src", "data"), []byte("source"), 0o600); err != nil {
					t.Fatal(err)
				}
				spec := volumeSpec{ID: "vol", Size: 1 << 20, Params: volumeParams{DirectoryMode: 0o750}, Source: "src", source: &src}
				crash(t, s, step, func() { _, _ = s.create(spec) })
				s.afterStep = nil
				if restart {
					_ = s.close()
					s = openTestStore(t, root)
				} else if _, err := s.create(spec); err != nil {
					t.Fatalf("retried clone: %v", err)
				}
				_, err = s.get("vol")
				if restart != errors.Is(err, errNotFound) {
					t.Errorf("clone after the crash: %v (restart %v)", err, restart)
				}
				if data, err := os.ReadFile(filepath.Join(root, volumesDir, "src", "data")); err != nil || string(data) != "source" {
					t.Errorf("source after the crash: %q, %v", data, err)
				}
				if got := listDir(t, filepath.Join(root, metaDir)); restart && len(got) != 1 {
					t.Errorf("records left: %v", got)
				}
			})
		}
	}
}

// checkGrownCopy checks an ext4 image volume copied (a clone or a restore)
// into a 128 MiB volume mounted at dir: its size, its file name holding
// want, and its file system grown to about the new size.
func checkGrownCopy(t *testing.T, what string, resp *csi.CreateVolumeResponse, dir, name, want string) {
	t.Helper()
	if resp.GetVolume().GetCapacityBytes() != 128<<20 {
		t.Errorf("%s has %d bytes, want %d", what, resp.GetVolume().GetCapacityBytes(), 128<<20)
	}
	if data, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(data) != want {
		t.Errorf("%s's %s: %q, %v; want %q", what, name, data, err, want)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.EXT4_SUPER_MAGIC || int64(st.Blocks)*st.Bsize < 100<<20 {
		t.Errorf("%s's file system: %v, type %#x, %d bytes; want ext4 grown to about 128 MiB", what, err, st.Type, int64(st.Blocks)*st.Bsize)
	}
}

// btrfsSource starts a driver on a btrfs data root with volume "src" of
// 64 MiB holding a 48 MiB file, and returns its directory and tree sum.
func btrfsSource(t *testing.T) (*testServer, *btrfsFS, string, string) {
	t.Helper()
	cfg, fsys := btrfsConfig(t)
	ts := startServer(t, cfg)
	req := createRequest("src")
	req.CapacityRange.RequiredBytes = 64 << 20
	if _, err := ts.controller.CreateVolume(testContext(t), req); err != nil {
		t.Fatal(err)
	}
	srcDir := filepath.Join(ts.dataRoot, volumesDir, "src")
	if _, err := writeFile(filepath.Join(srcDir, "big"), 48<<20); err != nil {
		t.Fatal(err)
	}
	return ts, fsys, srcDir, treeSum(t, srcDir)
}

// TestCloneBtrfs: a btrfs clone is a snapshot made in O(1): 48 MiB written
// to the source are shared, not copied (the clone's qgroup holds almost
// nothing exclusively), the clone's limit is its own size, and the two
// part ways on the first write.
func TestCloneBtrfs(t *testing.T) {
	ts, fsys, srcDir, want := btrfsSource(t)
	ctx := testContext(t)
	clone := createRequest("clone")
	clone.CapacityRange.RequiredBytes = 96 << 20
	if _, err := ts.controller.CreateVolume(ctx, cloneRequest(clone, "src")); err != nil {
		t.Fatalf("clone: %v", err)
	}
	cloneDir := filepath.Join(ts.dataRoot, volumesDir, "clone")
	if got := treeSum(t, cloneDir); got != want {
		t.Errorf("clone's tree differs from its source's")
	}
	fsys.commit(t)
	id := subvolumeID(t, cloneDir)
	if id == subvolumeID(t, srcDir) {
		t.Fatalf("clone is the source's subvolume")
	}
	if excl, ok := fsys.qgroup(t, id, "exclusive"); !ok || excl > 1<<20 {
		t.Errorf("clone holds %d bytes exclusively (qgroup there: %v), want the data shared", excl, ok)
	}
	if limit, _ := fsys.qgroup(t, id, "max_referenced"); limit != 96<<20 {
		t.Errorf("clone's limit %d, want %d", limit, 96<<20)
	}
	if err := os.WriteFile(filepath.Join(cloneDir, "new"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := treeSum(t, srcDir); got != want {
		t.Errorf("writing to the clone changed its source")
	}
}

// TestCloneImageInUse clones an ext4 image volume while a writer keeps
// appending to it: what was written before the clone is in the clone
// (the frozen file system was flushed), the clone mounts as a file system
// of its own, grown to the larger size asked for, and the writer never
// stalls for good (the source is thawed).
func TestCloneImageInUse(t *testing.T) {
	requireImages(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, imageRequest("src", 64<<20)); err != nil {
		t.Fatal(err)
	}
	srcDir := filepath.Join(ts.dataRoot, volumesDir, "src")
	// Written, not synced: only the freeze puts it in the image.
	if err := os.WriteFile(filepath.Join(srcDir, "before"), []byte("written before the clone"), 0o600); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		var err error
		for i := 0; err == nil; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			err = os.WriteFile(filepath.Join(srcDir, "busy"), []byte(fmt.Sprint(i)), 0o600)
		}
		done <- err
	}()
	resp, err := ts.controller.CreateVolume(ctx, cloneRequest(imageRequest("clone", 128<<20), "src"))
	close(stop)
	if werr := <-done; werr != nil {
		t.Errorf("writer: %v", werr)
	}
	if err != nil {
		t.Fatalf("clone: %v", err)
	}
	cloneDir := filepath.Join(ts.dataRoot, volumesDir, "clone")
	checkGrownCopy(t, "clone", resp, cloneDir, "before", "written before the clone")
	if err := os.WriteFile(filepath.Join(cloneDir, "before"), []byte("changed"), 0o600); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(filepath.Join(srcDir, "before")); string(data) != "written before the clone" {
		t.Errorf("writing to the clone changed its source: %q", data)
	}
	// A file system of another type is refused, with nothing left.
	xfs := imageRequest("xfs", 512<<20)
	xfs.Parameters[ParamFsType] = FsXFS
	if _, err := ts.controller.CreateVolume(ctx, cloneRequest(xfs, "src")); status.Code(err) != codes.InvalidArgument {
		t.Errorf("xfs clone of ext4: %v, want InvalidArgument", err)
	}
	if _, err := os.Stat(filepath.Join(ts.dataRoot, imagesDir, "xfs")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("refused clone left an image: %v", err)
	}
}

// blockSource starts a driver with block volume "src" holding "block data"
// at offset 4096, and returns the capabilities of a block volume and the
// source's file.
func blockSource(t *testing.T) (*testServer, []*csi.VolumeCapability, string) {
	t.Helper()
	requireLoop(t)
	ts := startServer(t, testConfig(t))
	caps := []*csi.VolumeCapability{blockCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}
	req := createRequest("src")
	req.VolumeCapabilities = caps
	if _, err := ts.controller.CreateVolume(testContext(t), req); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(ts.dataRoot, imagesDir, "src")
	writeAt(t, src, []byte("block data"), 4096)
	return ts, caps, src
}

// checkBlockCopy checks that the file of a block volume copied into 2 MiB
// holds the source's bytes at that size.
func checkBlockCopy(t *testing.T, what, file string) {
	t.Helper()
	if got := readAt(t, file, 10, 4096); string(got) != "block data" {
		t.Errorf("%s holds %q", what, got)
	}
	if fi, err := os.Stat(file); err != nil || fi.Size() != 2<<20 {
		t.Errorf("%s's file: %v, %v", what, fi, err)
	}
}

// TestCloneBlock: a block clone holds its source's bytes, at the size
// asked for.
func TestCloneBlock(t *testing.T) {
	ts, caps, _ := blockSource(t)
	ctx := testContext(t)
	clone := createRequest("clone")
	clone.VolumeCapabilities = caps
	clone.CapacityRange.RequiredBytes = 2 << 20
	if _, err := ts.controller.CreateVolume(ctx, cloneRequest(clone, "src")); err != nil {
		t.Fatal(err)
	}
	checkBlockCopy(t, "clone", filepath.Join(ts.dataRoot, imagesDir, "clone"))
}
