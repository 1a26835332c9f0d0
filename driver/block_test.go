package driver

import (
	"bytes"
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

// blockCapability is the block access type with access mode mode.
func blockCapability(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

var rwoBlock = blockCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER)

// requireLoop stops a test that needs real loop devices where there are
// none to be had.
func requireLoop(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := os.Stat(loopControl); err != nil && !testutil.InCI() {
		t.Skipf("no loop devices here (%v)", err)
	}
}

// deviceSize is the size of the block device at p, as a pod sees it.
func deviceSize(t *testing.T, p string) int64 {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		t.Fatalf("BLKGETSIZE64 %s: %v", p, err)
	}
	return int64(n)
}

// TestBlockVolume follows a block volume through what kubelet and a pod
// do with it: two targets show one device (a write through one is read
// through the other), the device stays attached until the last target
// goes and across an agent restart, it grows while published, and
// deleting it leaves no file and no loop device.
func TestBlockVolume(t *testing.T) {
	requireLoop(t)
	cfg := testConfig(t)
	ts := startServer(t, cfg)
	ctx := testContext(t)
	const size = 8 << 20
	req := createRequest("vol")
	req.CapacityRange = &csi.CapacityRange{RequiredBytes: size}
	req.VolumeCapabilities = []*csi.VolumeCapability{rwoBlock}
	resp, err := ts.controller.CreateVolume(ctx, req)
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	if b := resp.GetVolume().GetVolumeContext()[VolumeContextBackend]; b != BackendBlock {
		t.Errorf("backend %q, want %s", b, BackendBlock)
	}
	img := filepath.Join(ts.dataRoot, imagesDir, "vol")
	if fi, err := os.Stat(img); err != nil || fi.Size() != size {
		t.Fatalf("file %s: %v, %v; want %d bytes", img, fi, err, size)
	}
	if devs := loopsHolding(t, img); len(devs) != 0 {
		t.Errorf("loop devices before any publish: %v", devs)
	}
	// The same name as a file system volume is another volume.
	again := createRequest("vol")
	again.CapacityRange = req.CapacityRange
	if _, err := ts.controller.CreateVolume(ctx, again); status.Code(err) != codes.AlreadyExists {
		t.Errorf("CreateVolume with the mount access type: %v, want AlreadyExists", err)
	}
	if _, err := ts.controller.CreateVolume(ctx, req); err != nil {
		t.Errorf("CreateVolume again: %v", err)
	}

	// Kubelet makes the parent; the driver makes the target file.
	pods := filepath.Join(ts.dir, "publish")
	mustMkdir(t, pods)
	target := func(name string) string { return filepath.Join(pods, name) }
	publish := func(name string) {
		t.Helper()
		r := &csi.NodePublishVolumeRequest{VolumeId: "vol", TargetPath: target(name), VolumeCapability: rwoBlock}
		for range 2 { // a retry finds it done
			if _, err := ts.node.NodePublishVolume(ctx, r); err != nil {
				t.Fatalf("NodePublishVolume %s: %v", name, err)
			}
		}
		if fi, err := os.Stat(target(name)); err != nil || fi.Mode().Type() != os.ModeDevice {
			t.Fatalf("target %s: %v, %v; want a block device", name, fi, err)
		}
	}
	unpublish := func(name string) {
		t.Helper()
		if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: target(name)}); err != nil {
			t.Fatalf("NodeUnpublishVolume %s: %v", name, err)
		}
		if _, err := os.Lstat(target(name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("target %s left after unpublish: %v", name, err)
		}
	}
	oneLoop := func(when string) {
		t.Helper()
		if devs := loopsHolding(t, img); len(devs) != 1 {
			t.Errorf("%s: loop devices holding the file: %v, want exactly one", when, devs)
		}
	}
	publish("a")
	publish("b")
	oneLoop("published at two targets")
	if n := deviceSize(t, target("a")); n != size {
		t.Errorf("device size %d, want %d", n, size)
	}

	// A restarted agent's container has a /dev of its own: its node of the
	// device is another inode, and the target still counts as the volume's.
	var st unix.Stat_t
	if err := unix.Stat(target("a"), &st); err != nil {
		t.Fatal(err)
	}
	otherNode := filepath.Join(ts.dir, "loop-node-of-another-dev")
	if err := unix.Mknod(otherNode, unix.S_IFBLK|0o600, int(st.Rdev)); err != nil {
		t.Fatal(err)
	}
	if mountPoint, ours, err := NewMounter().Mounted(target("a"), otherNode); err != nil || !mountPoint || !ours {
		t.Errorf("Mounted through another node of the device: %t, %t, %v; want a mount point of it", mountPoint, ours, err)
	}

	data := bytes.Repeat([]byte("stickyvol"), 456)[:4096]
	writeAt(t, target("a"), data, 1<<20)
	if got := readAt(t, target("b"), len(data), 1<<20); !bytes.Equal(got, data) {
		t.Errorf("read through the other target: %q..., want what was written", got[:16])
	}
	if got := readAt(t, img, len(data), 1<<20); !bytes.Equal(got, data) {
		t.Errorf("the file does not hold what was written through the device")
	}

	// A restarted agent finds the device that holds the file.
	ts.stop()
	ts = startServer(t, cfg)
	publish("c")
	oneLoop("after a restart and a third target")
	unpublish("a")
	oneLoop("one target of three unpublished")

	exp, err := ts.controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
		VolumeId: "vol", CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * size}, VolumeCapability: rwoBlock,
	})
	if err != nil || exp.GetCapacityBytes() != 2*size || exp.GetNodeExpansionRequired() {
		t.Fatalf("ControllerExpandVolume: %v, %v; want %d bytes and no node step", exp, err, 2*size)
	}
	if n := deviceSize(t, target("b")); n != 2*size {
		t.Errorf("device size after expansion %d, want %d", n, 2*size)
	}
	if _, err := ts.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: "vol", VolumePath: target("b"), VolumeCapability: rwoBlock}); err != nil {
		t.Errorf("NodeExpandVolume: %v", err)
	}
	stats, err := ts.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "vol", VolumePath: target("b")})
	if err != nil || len(stats.GetUsage()) != 1 || stats.GetUsage()[0].GetTotal() != 2*size {
		t.Errorf("NodeGetVolumeStats: %v, %v; want the total only", stats, err)
	}
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("DeleteVolume while published: %v, want FailedPrecondition", err)
	}
	// Read-only: the same device (kubelet gives the container read
	// permission only).
	ro := &csi.NodePublishVolumeRequest{VolumeId: "vol", TargetPath: target("ro"), VolumeCapability: rwoBlock, Readonly: true}
	if _, err := ts.node.NodePublishVolume(ctx, ro); err != nil {
		t.Errorf("read-only publish: %v", err)
	}
	oneLoop("a read-only target added")
	unpublish("ro")

	unpublish("b")
	oneLoop("two targets of three unpublished")
	unpublish("c")
	waitNoLoop(t, img)
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol"}); err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}
	if _, err := os.Lstat(img); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file left after DeleteVolume: %v", err)
	}
	if a := ts.Allocated(); a != 0 {
		t.Errorf("allocated %d after DeleteVolume, want 0", a)
	}
}

// TestBlockVolumeDeleteDetaches deletes a block volume whose device is
// still attached with no target mounted (the node's mounts went away
// behind the driver's back): the device goes with the file.
func TestBlockVolumeDeleteDetaches(t *testing.T) {
	requireLoop(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	req := createRequest("vol")
	req.VolumeCapabilities = []*csi.VolumeCapability{rwoBlock}
	if _, err := ts.controller.CreateVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(ts.dir, "t")
	if _, err := ts.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "vol", TargetPath: target, VolumeCapability: rwoBlock}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(target, 0); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(ts.dataRoot, imagesDir, "vol")
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol"}); err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}
	waitNoLoop(t, img)
	if _, err := os.Lstat(img); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file left after DeleteVolume: %v", err)
	}
}

func writeAt(t *testing.T, p string, data []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatalf("writing %s: %v", p, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", p, err)
	}
}

func readAt(t *testing.T, p string, n int, off int64) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("reading %s: %v", p, err)
	}
	return b
}

// TestBlockVolumeUnpublishAfterUnmount unpublishes targets whose mounts
// went away behind the driver's back (kubelet cleaned up, the node lost
// its mounts), one of them forgotten already by a later publish: each call
// succeeds, and the device, which no target has now, is detached.
func TestBlockVolumeUnpublishAfterUnmount(t *testing.T) {
	requireLoop(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	req := createRequest("vol")
	req.VolumeCapabilities = []*csi.VolumeCapability{rwoBlock}
	if _, err := ts.controller.CreateVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	lose := func(target string) {
		t.Helper()
		if _, err := ts.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "vol", TargetPath: target, VolumeCapability: rwoBlock}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Unmount(target, 0); err != nil {
			t.Fatal(err)
		}
	}
	first, second := filepath.Join(ts.dir, "first"), filepath.Join(ts.dir, "second")
	lose(first)
	lose(second) // its publish forgets first, which shows no mount
	if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: first}); err != nil {
		t.Fatalf("NodeUnpublishVolume of the forgotten target: %v", err)
	}
	waitNoLoop(t, filepath.Join(ts.dataRoot, imagesDir, "vol"))
	if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: second}); err != nil {
		t.Fatalf("NodeUnpublishVolume: %v", err)
	}
	if _, err := os.Lstat(second); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target file left: %v", err)
	}
}
