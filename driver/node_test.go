package driver

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// TestPublishUnpublish follows a volume through a pod's life: published,
// written through the target, published again (kubelet retries), stats,
// unpublished (target gone, data kept), unpublished again.
func TestPublishUnpublish(t *testing.T) {
	testutil.RequireRoot(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("vol")); err != nil {
		t.Fatal(err)
	}
	pod := filepath.Join(ts.dir, "pod")
	mustMkdir(t, pod)
	target := filepath.Join(pod, "mount")

	for range 2 {
		if _, err := ts.node.NodePublishVolume(ctx, publishRequest("vol", target)); err != nil {
			t.Fatalf("NodePublishVolume: %v", err)
		}
	}
	if !ts.isMounted(t, "vol", target) {
		t.Fatal("target is not a mount of the volume")
	}
	if err := os.WriteFile(filepath.Join(target, "data"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatalf("writing through the target: %v", err)
	}

	stats, err := ts.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "vol", VolumePath: target})
	if err != nil {
		t.Fatalf("NodeGetVolumeStats: %v", err)
	}
	bytes, inodes := stats.GetUsage()[0], stats.GetUsage()[1]
	if bytes.GetUnit() != csi.VolumeUsage_BYTES || bytes.GetTotal() != 1<<20 || bytes.GetUsed() < 1<<20 || bytes.GetAvailable() != 0 {
		t.Errorf("byte usage = %v; want total 1 MiB, used >= 1 MiB, available 0", bytes)
	}
	if inodes.GetUnit() != csi.VolumeUsage_INODES || inodes.GetUsed() != 2 || inodes.GetTotal() != inodes.GetUsed()+inodes.GetAvailable() {
		t.Errorf("inode usage = %v; want 2 used (directory and file)", inodes)
	}

	// Deleting a volume a pod still uses is refused.
	_, err = ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("DeleteVolume while published: %v, want FailedPrecondition", err)
	}

	for range 2 {
		if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: target}); err != nil {
			t.Fatalf("NodeUnpublishVolume: %v", err)
		}
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target still there after unpublish: %v", err)
	}
	if _, err := os.Stat(filepath.Join(ts.dataRoot, volumesDir, "vol", "data")); err != nil {
		t.Errorf("data written through the target is gone: %v", err)
	}
	if v := ts.Volumes()[0]; len(v.Targets) != 0 {
		t.Errorf("record still lists targets %v", v.Targets)
	}
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol"}); err != nil {
		t.Errorf("DeleteVolume after unpublish: %v", err)
	}
}

func TestPublishReadOnly(t *testing.T) {
	testutil.RequireRoot(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("vol")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  *csi.NodePublishVolumeRequest
	}{
		{"readonly flag", &csi.NodePublishVolumeRequest{Readonly: true, VolumeCapability: rwo}},
		{"reader-only mode", &csi.NodePublishVolumeRequest{
			VolumeCapability: mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY)}},
	} {
		target := filepath.Join(ts.dir, tc.name)
		tc.req.VolumeId, tc.req.TargetPath = "vol", target
		if _, err := ts.node.NodePublishVolume(ctx, tc.req); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		err := os.WriteFile(filepath.Join(target, "x"), nil, 0o644)
		if !errors.Is(err, unix.EROFS) {
			t.Errorf("%s: writing into the target: %v, want EROFS", tc.name, err)
		}
		// Publishing the same target writable is a conflict.
		_, err = ts.node.NodePublishVolume(ctx, publishRequest("vol", target))
		if status.Code(err) != codes.AlreadyExists {
			t.Errorf("%s: publishing read-write on a read-only target: %v, want AlreadyExists", tc.name, err)
		}
	}
}

// TestPublishSingleWriter checks ReadWriteOncePod: one target at a time,
// and a target forgotten after it was unmounted behind the driver's back
// (e.g. a node reboot) does not hold the volume.
func TestPublishSingleWriter(t *testing.T) {
	testutil.RequireRoot(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("vol")); err != nil {
		t.Fatal(err)
	}
	rwop := mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)
	publish := func(target string, c *csi.VolumeCapability) error {
		_, err := ts.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
			VolumeId: "vol", TargetPath: target, VolumeCapability: c})
		return err
	}
	first, second := filepath.Join(ts.dir, "first"), filepath.Join(ts.dir, "second")
	if err := publish(first, rwop); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*csi.VolumeCapability{rwop, rwo} {
		if err := publish(second, c); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("second target with %v: %v, want FailedPrecondition", c.GetAccessMode().GetMode(), err)
		}
		if _, err := os.Lstat(second); err == nil {
			t.Errorf("refused publish left %s behind", second)
		}
	}
	if err := unix.Unmount(first, 0); err != nil {
		t.Fatal(err)
	}
	if err := publish(second, rwop); err != nil {
		t.Errorf("publish after the first target was unmounted: %v", err)
	}

	// Plain ReadWriteOnce volumes may be used by several pods of the node.
	if _, err := ts.controller.CreateVolume(ctx, createRequest("shared")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pod-a", "pod-b"} {
		if _, err := ts.node.NodePublishVolume(ctx, publishRequest("shared", filepath.Join(ts.dir, name))); err != nil {
			t.Errorf("RWO publish at %s: %v", name, err)
		}
	}
}

func TestUnpublishLeavesOtherMounts(t *testing.T) {
	testutil.RequireRoot(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	for _, id := range []string{"vol-a", "vol-b"} {
		if _, err := ts.controller.CreateVolume(ctx, createRequest(id)); err != nil {
			t.Fatal(err)
		}
	}
	target := filepath.Join(ts.dir, "target")
	if _, err := ts.node.NodePublishVolume(ctx, publishRequest("vol-a", target)); err != nil {
		t.Fatal(err)
	}
	// Unpublishing another volume at this target touches nothing.
	if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-b", TargetPath: target}); err != nil {
		t.Fatalf("NodeUnpublishVolume of another volume: %v", err)
	}
	if !ts.isMounted(t, "vol-a", target) {
		t.Error("unpublishing vol-b unmounted vol-a")
	}
	// A volume the driver does not know: nothing to do where nothing is
	// mounted, NotFound where something is.
	unknown := &csi.NodeUnpublishVolumeRequest{VolumeId: "pvc-unknown", TargetPath: filepath.Join(ts.dir, "gone")}
	if _, err := ts.node.NodeUnpublishVolume(ctx, unknown); err != nil {
		t.Errorf("NodeUnpublishVolume of an unknown volume at a missing target: %v", err)
	}
	unknown.TargetPath = target
	if _, err := ts.node.NodeUnpublishVolume(ctx, unknown); status.Code(err) != codes.NotFound {
		t.Errorf("NodeUnpublishVolume of an unknown volume at a mount point: %v, want NotFound", err)
	}
	// Publishing another volume on an occupied target is refused.
	_, err := ts.node.NodePublishVolume(ctx, publishRequest("vol-b", target))
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("publishing on another volume's target: %v, want FailedPrecondition", err)
	}
	if !ts.isMounted(t, "vol-a", target) {
		t.Error("refused publish disturbed the existing mount")
	}
}

func TestNodeGetInfo(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := testConfig(t)
	cfg.MaxVolumesPerNode = 42
	ts := startServer(t, cfg)
	info, err := ts.node.NodeGetInfo(testContext(t), &csi.NodeGetInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetNodeId() != "node-1" || info.GetMaxVolumesPerNode() != 42 ||
		info.GetAccessibleTopology().GetSegments()[TopologyKey] != "node-1" {
		t.Errorf("NodeGetInfo = %v", info)
	}
}

// TestPublishMountOptions checks that mount options reach the target's
// mount, and only it, and that a target published with some options is
// not published again with others.
func TestPublishMountOptions(t *testing.T) {
	testutil.RequireRoot(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("vol")); err != nil {
		t.Fatal(err)
	}
	rootFlags := statfsFlags(t, ts.dataRoot)
	restricted := uint64(unix.ST_NOSUID | unix.ST_NODEV | unix.ST_NOEXEC)
	if rootFlags&restricted == restricted {
		t.Skipf("the data root's file system is already nosuid,nodev,noexec (%#x); nothing to see", rootFlags)
	}
	target, plain := filepath.Join(ts.dir, "opts"), filepath.Join(ts.dir, "plain")
	req := publishRequest("vol", target)
	req.VolumeCapability = withMountFlags(rwo, "nosuid", "nodev", "noexec", "noatime", "nodev")
	for range 2 {
		if _, err := ts.node.NodePublishVolume(ctx, req); err != nil {
			t.Fatalf("NodePublishVolume with mount options: %v", err)
		}
	}
	want := restricted | unix.ST_NOATIME
	if got := statfsFlags(t, target); got&want != want {
		t.Errorf("target flags = %#x, want nosuid, nodev, noexec and noatime (%#x)", got, want)
	}
	if err := os.WriteFile(filepath.Join(target, "x"), nil, 0o644); err != nil {
		t.Errorf("writing into the target: %v", err)
	}
	if _, err := ts.node.NodePublishVolume(ctx, publishRequest("vol", plain)); err != nil {
		t.Fatal(err)
	}
	if got := statfsFlags(t, plain); got&restricted != rootFlags&restricted {
		t.Errorf("target without options has flags %#x; the options of another target leaked", got)
	}
	if got := statfsFlags(t, ts.dataRoot); got != rootFlags {
		t.Errorf("data root flags changed from %#x to %#x", rootFlags, got)
	}

	other := publishRequest("vol", target)
	other.VolumeCapability = withMountFlags(rwo, "nosuid")
	if _, err := ts.node.NodePublishVolume(ctx, other); status.Code(err) != codes.AlreadyExists {
		t.Errorf("publishing with other mount options: %v, want AlreadyExists", err)
	}

	// "ro" is read-only like the readonly field.
	ro := filepath.Join(ts.dir, "ro")
	req = publishRequest("vol", ro)
	req.VolumeCapability = withMountFlags(rwo, "ro", "nosuid")
	if _, err := ts.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ro, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("writing into a target published with ro: %v, want EROFS", err)
	}
}
