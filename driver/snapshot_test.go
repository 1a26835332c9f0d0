package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// restoreRequest is req as a restore of snapshot snap.
func restoreRequest(req *csi.CreateVolumeRequest, snap string) *csi.CreateVolumeRequest {
	req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap}}}
	return req
}

// takeSnapshot takes snapshot id of volume src and fails the test if it
// cannot.
func (ts *testServer) takeSnapshot(t *testing.T, id, src string) *csi.Snapshot {
	t.Helper()
	resp, err := ts.controller.CreateSnapshot(testContext(t), &csi.CreateSnapshotRequest{Name: id, SourceVolumeId: src})
	if err != nil {
		t.Fatalf("CreateSnapshot %s of %s: %v", id, src, err)
	}
	return resp.GetSnapshot()
}

func (ts *testServer) deleteSnapshot(t *testing.T, id string) {
	t.Helper()
	if _, err := ts.controller.DeleteSnapshot(testContext(t), &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
		t.Fatalf("DeleteSnapshot %s: %v", id, err)
	}
}

// TestSnapshotDirectory follows a snapshot of a directory volume: it keeps
// the tree as it was when taken while the volume goes on changing, a
// volume restored from it has that tree and is independent of it, its
// size counts against the node's capacity until it is deleted, and
// deleting it leaves nothing in snapshots/. Repeats and contradictions get
// the codes CSI asks for, and refusals leave no files.
func TestSnapshotDirectory(t *testing.T) {
	testutil.RequireRoot(t) // fillTree chowns
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("src")); err != nil {
		t.Fatal(err)
	}
	srcDir := filepath.Join(ts.dataRoot, volumesDir, "src")
	fillTree(t, srcDir)
	want := treeSum(t, srcDir)

	sn := ts.takeSnapshot(t, "snapshot-1", "src")
	if sn.GetSnapshotId() != "snapshot-1" || sn.GetSourceVolumeId() != "src" || sn.GetSizeBytes() != 1<<20 ||
		!sn.GetReadyToUse() || sn.GetCreationTime().AsTime().IsZero() {
		t.Errorf("snapshot %v", sn)
	}
	if a := ts.Allocated(); a != 2<<20 {
		t.Errorf("allocated %d with a volume and its snapshot, want %d", a, 2<<20)
	}
	// The volume changes after the snapshot.
	if err := os.WriteFile(filepath.Join(srcDir, "a.txt"), []byte("changed"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(srcDir, "new"), []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}

	// A repeat is the same snapshot; the same name for another volume is
	// not.
	if again := ts.takeSnapshot(t, "snapshot-1", "src"); !again.GetCreationTime().AsTime().Equal(sn.GetCreationTime().AsTime()) {
		t.Errorf("repeated CreateSnapshot: creation time %v, first %v", again.GetCreationTime().AsTime(), sn.GetCreationTime().AsTime())
	}
	if _, err := ts.controller.CreateVolume(ctx, createRequest("other")); err != nil {
		t.Fatal(err)
	}
	_, err := ts.controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snapshot-1", SourceVolumeId: "other"})
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("snapshot name taken by a snapshot of another volume: %v, want AlreadyExists", err)
	}

	// Restored, the volume has the tree of the snapshot's moment.
	resp, err := ts.controller.CreateVolume(ctx, restoreRequest(createRequest("restored"), "snapshot-1"))
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if got := resp.GetVolume().GetContentSource().GetSnapshot().GetSnapshotId(); got != "snapshot-1" {
		t.Errorf("content source %v, want snapshot-1", resp.GetVolume().GetContentSource())
	}
	restoredDir := filepath.Join(ts.dataRoot, volumesDir, "restored")
	if got := treeSum(t, restoredDir); got != want {
		t.Errorf("restored volume's tree differs from the volume's when the snapshot was taken")
	}
	// Repeats: the same restore is the same volume; other sources are not.
	if _, err := ts.controller.CreateVolume(ctx, restoreRequest(createRequest("restored"), "snapshot-1")); err != nil {
		t.Errorf("repeated restore: %v", err)
	}
	ts.takeSnapshot(t, "snapshot-2", "src")
	for name, req := range map[string]*csi.CreateVolumeRequest{
		"another snapshot": restoreRequest(createRequest("restored"), "snapshot-2"),
		"a clone":          cloneRequest(createRequest("restored"), "src"),
		"no source":        createRequest("restored"),
		"a snapshot now":   restoreRequest(createRequest("other"), "snapshot-1"),
	} {
		if _, err := ts.controller.CreateVolume(ctx, req); status.Code(err) != codes.AlreadyExists {
			t.Errorf("%s: %v, want AlreadyExists", name, err)
		}
	}

	// Independent: a write to the restored volume changes neither the
	// snapshot nor a second restore; deleting the source and the
	// snapshot leaves the restored volume as it is.
	if err := os.WriteFile(filepath.Join(restoredDir, "a.txt"), []byte("mine"), 0o640); err != nil {
		t.Fatal(err)
	}
	if got := treeSum(t, filepath.Join(ts.dataRoot, snapshotsDir, "snapshot-1")); got != want {
		t.Errorf("writing to the restored volume changed the snapshot")
	}
	restoredNow := treeSum(t, restoredDir)
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "src"}); err != nil {
		t.Fatalf("deleting a volume that has snapshots: %v", err)
	}
	big := createRequest("big")
	big.CapacityRange.RequiredBytes = 3 << 20
	if resp, err := ts.controller.CreateVolume(ctx, restoreRequest(big, "snapshot-1")); err != nil || resp.GetVolume().GetCapacityBytes() != 3<<20 {
		t.Errorf("larger restore after the source is gone: %v, %d bytes", err, resp.GetVolume().GetCapacityBytes())
	}
	ts.deleteSnapshot(t, "snapshot-1")
	ts.deleteSnapshot(t, "snapshot-1") // unknown now: still success
	if got := treeSum(t, restoredDir); got != restoredNow {
		t.Errorf("deleting the snapshot changed the volume restored from it")
	}

	// Refusals, with nothing left behind.
	before := listDir(t, filepath.Join(ts.dataRoot, volumesDir))
	small := createRequest("small")
	small.CapacityRange = &csi.CapacityRange{RequiredBytes: 1 << 19, LimitBytes: 1 << 19}
	image := createRequest("image")
	image.Parameters = map[string]string{ParamVolumeType: VolumeTypeImage}
	block := createRequest("block")
	block.VolumeCapabilities = []*csi.VolumeCapability{blockCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}
	required := createRequest("required")
	required.Parameters = map[string]string{ParamSizeEnforcement: SizeEnforcementRequired}
	for _, tc := range []struct {
		name string
		req  *csi.CreateVolumeRequest
		want codes.Code
	}{
		{"smaller than the snapshot", restoreRequest(small, "snapshot-2"), codes.OutOfRange},
		{"deleted snapshot", restoreRequest(createRequest("gone"), "snapshot-1"), codes.NotFound},
		{"image class, directory snapshot", restoreRequest(image, "snapshot-2"), codes.InvalidArgument},
		{"block restore of a mount volume", restoreRequest(block, "snapshot-2"), codes.InvalidArgument},
		{"enforced size from a directory", restoreRequest(required, "snapshot-2"), codes.InvalidArgument},
	} {
		if _, err := ts.controller.CreateVolume(ctx, tc.req); status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
	if after := listDir(t, filepath.Join(ts.dataRoot, volumesDir)); !slices.Equal(after, before) {
		t.Errorf("refused restores left directories: %v, before %v", after, before)
	}

	ts.deleteSnapshot(t, "snapshot-2")
	if left := listDir(t, filepath.Join(ts.dataRoot, snapshotsDir)); len(left) != 0 {
		t.Errorf("snapshots/ after deleting every snapshot: %v", left)
	}
	if a := ts.Allocated(); a != 5<<20 {
		t.Errorf("allocated %d with volumes other, restored and big, want %d", a, 5<<20)
	}
}

// TestSnapshotOfInlineVolume: an inline ephemeral volume has no
// snapshots.
func TestSnapshotOfInlineVolume(t *testing.T) {
	testutil.RequireRoot(t) // bind mounts
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	req := inlineRequest(t, ts.dir, "0001", nil)
	if _, err := ts.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	_, err := ts.controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: req.GetVolumeId()})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("snapshot of an inline volume: %v, want InvalidArgument", err)
	}
	if _, err := os.Stat(filepath.Join(ts.dataRoot, snapshotsDir, "snap")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("refused snapshot left data: %v", err)
	}
}

// TestListSnapshots: all snapshots in ID order, the filters, and pages
// that neither repeat nor skip a snapshot when one is deleted between
// them.
func TestListSnapshots(t *testing.T) {
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	for _, v := range []string{"vol-a", "vol-b"} {
		if _, err := ts.controller.CreateVolume(ctx, createRequest(v)); err != nil {
			t.Fatal(err)
		}
	}
	for i, src := range []string{"vol-a", "vol-b", "vol-a", "vol-b", "vol-a"} {
		ts.takeSnapshot(t, fmt.Sprintf("snap-%d", i), src)
	}
	list := func(req *csi.ListSnapshotsRequest) (ids []string, next string) {
		t.Helper()
		resp, err := ts.controller.ListSnapshots(ctx, req)
		if err != nil {
			t.Fatalf("ListSnapshots %v: %v", req, err)
		}
		for _, e := range resp.GetEntries() {
			ids = append(ids, e.GetSnapshot().GetSnapshotId())
		}
		return ids, resp.GetNextToken()
	}
	for _, tc := range []struct {
		name string
		req  *csi.ListSnapshotsRequest
		want []string
	}{
		{"all", &csi.ListSnapshotsRequest{}, []string{"snap-0", "snap-1", "snap-2", "snap-3", "snap-4"}},
		{"by ID", &csi.ListSnapshotsRequest{SnapshotId: "snap-3"}, []string{"snap-3"}},
		{"unknown ID", &csi.ListSnapshotsRequest{SnapshotId: "snap-9"}, nil},
		{"by source", &csi.ListSnapshotsRequest{SourceVolumeId: "vol-b"}, []string{"snap-1", "snap-3"}},
		{"by ID and another source", &csi.ListSnapshotsRequest{SnapshotId: "snap-3", SourceVolumeId: "vol-a"}, nil},
		{"unknown source", &csi.ListSnapshotsRequest{SourceVolumeId: "vol-z"}, nil},
	} {
		if got, next := list(tc.req); !slices.Equal(got, tc.want) || next != "" {
			t.Errorf("%s: %v (next %q), want %v", tc.name, got, next, tc.want)
		}
	}

	page, next := list(&csi.ListSnapshotsRequest{MaxEntries: 2})
	if !slices.Equal(page, []string{"snap-0", "snap-1"}) || next == "" {
		t.Fatalf("first page %v, next %q", page, next)
	}
	ts.deleteSnapshot(t, "snap-1") // already listed: the next page is unchanged
	page, next = list(&csi.ListSnapshotsRequest{MaxEntries: 2, StartingToken: next})
	if !slices.Equal(page, []string{"snap-2", "snap-3"}) || next == "" {
		t.Fatalf("second page %v, next %q", page, next)
	}
	page, next = list(&csi.ListSnapshotsRequest{StartingToken: next, SourceVolumeId: "vol-a"})
	if !slices.Equal(page, []string{"snap-4"}) || next != "" {
		t.Errorf("last page of vol-a's %v, next %q", page, next)
	}
	for _, req := range []*csi.ListSnapshotsRequest{{StartingToken: "2"}, {StartingToken: "after:../x"}} {
		if _, err := ts.controller.ListSnapshots(ctx, req); status.Code(err) != codes.Aborted {
			t.Errorf("token %q: %v, want Aborted", req.GetStartingToken(), err)
		}
	}
	if _, err := ts.controller.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: -1}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("negative max_entries: %v, want InvalidArgument", err)
	}
}

// TestSnapshotHoldsLocks: while a volume is restored from a snapshot, the
// snapshot cannot be deleted (Aborted, retried), and a snapshot of a busy
// volume waits for it the same way.
func TestSnapshotHoldsLocks(t *testing.T) {
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("src")); err != nil {
		t.Fatal(err)
	}
	ts.takeSnapshot(t, "snap", "src")
	st := ts.pools.byName[DefaultPool]
	called := false
	st.afterStep = func(step string) {
		if step != "create:intent" || called {
			return
		}
		called = true
		if _, err := ts.controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "snap"}); status.Code(err) != codes.Aborted {
			t.Errorf("DeleteSnapshot during a restore from it: %v, want Aborted", err)
		}
		_, err := ts.controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-2", SourceVolumeId: "restored"})
		if status.Code(err) != codes.Aborted {
			t.Errorf("CreateSnapshot of a volume being made: %v, want Aborted", err)
		}
	}
	if _, err := ts.controller.CreateVolume(ctx, restoreRequest(createRequest("restored"), "snap")); err != nil {
		t.Fatal(err)
	}
	st.afterStep = nil
	if !called {
		t.Fatal("the restore never reached create:intent")
	}
	ts.deleteSnapshot(t, "snap")
}

// TestSnapshotBtrfs: on btrfs a snapshot is a read-only subvolume made in
// O(1): it shares the volume's 48 MiB rather than copying them and
// reserves none of the node's capacity; the volume restored from it is a
// writable subvolume with its own limit; deleting the snapshot deletes
// the subvolume and, once btrfs has freed it, its qgroup.
func TestSnapshotBtrfs(t *testing.T) {
	ts, fsys, srcDir, want := btrfsSource(t)
	ctx := testContext(t)
	ts.takeSnapshot(t, "snap", "src")
	if a := ts.Allocated(); a != 64<<20 {
		t.Errorf("allocated %d after a btrfs snapshot, want the volume's %d only", a, 64<<20)
	}
	snapDir := filepath.Join(ts.dataRoot, snapshotsDir, "snap")
	fsys.commit(t)
	id := subvolumeID(t, snapDir)
	if id == subvolumeID(t, srcDir) {
		t.Fatal("the snapshot is the volume's subvolume")
	}
	if excl, ok := fsys.qgroup(t, id, "exclusive"); !ok || excl > 1<<20 {
		t.Errorf("snapshot holds %d bytes exclusively (qgroup there: %v), want the data shared", excl, ok)
	}
	if err := os.WriteFile(filepath.Join(snapDir, "x"), nil, 0o600); !errors.Is(err, unix.EROFS) {
		t.Errorf("writing into the snapshot: %v, want EROFS", err)
	}
	if err := os.WriteFile(filepath.Join(srcDir, "big"), []byte("overwritten"), 0o644); err != nil {
		t.Fatal(err)
	}

	restore := createRequest("restored")
	restore.CapacityRange.RequiredBytes = 96 << 20
	if _, err := ts.controller.CreateVolume(ctx, restoreRequest(restore, "snap")); err != nil {
		t.Fatalf("restore: %v", err)
	}
	restoredDir := filepath.Join(ts.dataRoot, volumesDir, "restored")
	if got := treeSum(t, restoredDir); got != want {
		t.Errorf("restored volume's tree differs from the volume's when the snapshot was taken")
	}
	rid := subvolumeID(t, restoredDir)
	if limit, _ := fsys.qgroup(t, rid, "max_referenced"); limit != 96<<20 {
		t.Errorf("restored volume's limit %d, want %d", limit, 96<<20)
	}
	if err := os.WriteFile(filepath.Join(restoredDir, "new"), []byte("x"), 0o600); err != nil {
		t.Errorf("writing into the restored volume: %v", err)
	}

	// The source goes first: its snapshot does not depend on it.
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "src"}); err != nil {
		t.Fatal(err)
	}
	if got := treeSum(t, snapDir); got != want {
		t.Errorf("snapshot changed when its source was deleted")
	}
	ts.deleteSnapshot(t, "snap")
	if left := listDir(t, filepath.Join(ts.dataRoot, snapshotsDir)); len(left) != 0 {
		t.Errorf("snapshots/ after DeleteSnapshot: %v", left)
	}
	waitQgroupGone(t, fsys, id)
	if got := treeSum(t, restoredDir); got == want {
		t.Errorf("restored volume lost its own write when the snapshot was deleted")
	}
}

// waitQgroupGone waits for qgroup 0/<id> to go, which btrfs does once its
// cleaner has freed the deleted subvolume, after a commit.
func waitQgroupGone(t *testing.T, fsys *btrfsFS, id uint64) {
	t.Helper()
	for range 300 {
		if _, ok := fsys.qgroup(t, id, "referenced"); !ok {
			return
		}
		fsys.commit(t)
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("qgroup 0/%d still there 30 s after its subvolume was deleted", id)
}

// TestSnapshotImage: an image volume's snapshot is its file system at one
// moment (written, not synced, before the snapshot; not what came after),
// and a volume restored from it at a larger size mounts as a file system
// of its own, grown to that size.
func TestSnapshotImage(t *testing.T) {
	requireImages(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, imageRequest("src", 64<<20)); err != nil {
		t.Fatal(err)
	}
	srcDir := filepath.Join(ts.dataRoot, volumesDir, "src")
	if err := os.WriteFile(filepath.Join(srcDir, "data"), []byte("before the snapshot"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts.takeSnapshot(t, "snap", "src")
	if a := ts.Allocated(); a != 128<<20 {
		t.Errorf("allocated %d with an image volume and its snapshot, want %d", a, 128<<20)
	}
	if err := os.WriteFile(filepath.Join(srcDir, "data"), []byte("after the snapshot"), 0o600); err != nil {
		t.Fatal(err)
	}
	resp, err := ts.controller.CreateVolume(ctx, restoreRequest(imageRequest("restored", 128<<20), "snap"))
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	restoredDir := filepath.Join(ts.dataRoot, volumesDir, "restored")
	checkGrownCopy(t, "restored volume", resp, restoredDir, "data", "before the snapshot")
	xfs := imageRequest("xfs", 512<<20)
	xfs.Parameters[ParamFsType] = FsXFS
	if _, err := ts.controller.CreateVolume(ctx, restoreRequest(xfs, "snap")); status.Code(err) != codes.InvalidArgument {
		t.Errorf("xfs restore of an ext4 snapshot: %v, want InvalidArgument", err)
	}
	if _, err := os.Stat(filepath.Join(ts.dataRoot, imagesDir, "xfs")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("refused restore left an image: %v", err)
	}
	ts.deleteSnapshot(t, "snap")
	if left := listDir(t, filepath.Join(ts.dataRoot, snapshotsDir)); len(left) != 0 {
		t.Errorf("snapshots/ after DeleteSnapshot: %v", left)
	}
	if data, err := os.ReadFile(filepath.Join(restoredDir, "data")); err != nil || string(data) != "before the snapshot" {
		t.Errorf("restored volume after its snapshot went: %q, %v", data, err)
	}
}

// TestSnapshotBlock: a block volume's snapshot keeps its bytes, and a
// volume restored from it holds them at the size asked for.
func TestSnapshotBlock(t *testing.T) {
	ts, caps, src := blockSource(t)
	ctx := testContext(t)
	ts.takeSnapshot(t, "snap", "src")
	writeAt(t, src, []byte("overwrite!"), 4096)
	restore := createRequest("restored")
	restore.VolumeCapabilities = caps
	restore.CapacityRange.RequiredBytes = 2 << 20
	if _, err := ts.controller.CreateVolume(ctx, restoreRequest(restore, "snap")); err != nil {
		t.Fatal(err)
	}
	checkBlockCopy(t, "restored volume", filepath.Join(ts.dataRoot, imagesDir, "restored"))
	mount := createRequest("mount")
	if _, err := ts.controller.CreateVolume(ctx, restoreRequest(mount, "snap")); status.Code(err) != codes.InvalidArgument {
		t.Errorf("mount restore of a block snapshot: %v, want InvalidArgument", err)
	}
	ts.deleteSnapshot(t, "snap")
	if left := listDir(t, filepath.Join(ts.dataRoot, snapshotsDir)); len(left) != 0 {
		t.Errorf("snapshots/ after DeleteSnapshot: %v", left)
	}
}
