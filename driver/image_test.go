package driver

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// requireImages stops a test that needs real image volumes where they
// cannot be made: root (loop devices, mounts) and mke2fs.
func requireImages(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := findTool("mke2fs"); err != nil {
		testutil.RequireCommand(t, "mke2fs")
	}
}

// imageRequest is a CreateVolumeRequest for an image volume of size bytes.
func imageRequest(name string, size int64) *csi.CreateVolumeRequest {
	req := createRequest(name)
	req.CapacityRange = &csi.CapacityRange{RequiredBytes: size}
	req.Parameters = map[string]string{ParamVolumeType: VolumeTypeImage}
	return req
}

// loopsHolding lists the loop devices attached to the file img.
func loopsHolding(t *testing.T, img string) []string {
	t.Helper()
	files, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		t.Fatal(err)
	}
	var devs []string
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == img {
			devs = append(devs, filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
	return devs
}

// waitNoLoop waits for the loop devices of img to go: autoclear detaches
// a device when its last user closes it, which the kernel may finish a
// moment after the unmount returns.
func waitNoLoop(t *testing.T, img string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(loopsHolding(t, img)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("loop devices still attached to %s: %v", img, loopsHolding(t, img))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// hasCapability reports whether this process has capability c in its
// effective set.
func hasCapability(t *testing.T, c uint) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			bits, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return bits&(1<<c) != 0
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
	return false
}

// TestImageVolume follows an image volume of each file system through its
// life: its size is a limit a pod hits (ENOSPC), it grows in two CSI
// steps, online while published where the kernel lets the agent (xfs;
// ext4 with CAP_SYS_RESOURCE) and else offline at the next publish, and
// deleting it leaves no image, mount point or loop device.
func TestImageVolume(t *testing.T) {
	requireImages(t)
	for _, tc := range []struct {
		fsType      string
		ask, size   int64 // the request, and the size the volume gets
		grown       int64
		growsOnline bool
	}{
		{FsExt4, 16 << 20, 16 << 20, 48 << 20, hasCapability(t, unix.CAP_SYS_RESOURCE)},
		{FsXFS, 16 << 20, 300 << 20, 400 << 20, true},
	} {
		t.Run(tc.fsType, func(t *testing.T) {
			if tc.fsType == FsXFS {
				testutil.RequireCommand(t, "mkfs.xfs")
			}
			ts := startServer(t, testConfig(t))
			ctx := testContext(t)
			req := imageRequest("vol", tc.ask)
			req.Parameters[ParamFsType] = tc.fsType
			resp, err := ts.controller.CreateVolume(ctx, req)
			if err != nil {
				t.Fatalf("CreateVolume: %v", err)
			}
			if b := resp.GetVolume().GetVolumeContext()[VolumeContextBackend]; b != BackendImage || resp.GetVolume().GetCapacityBytes() != tc.size {
				t.Errorf("volume %v, want backend %s and %d bytes", resp.GetVolume(), BackendImage, tc.size)
			}
			img := filepath.Join(ts.dataRoot, imagesDir, "vol")
			target := filepath.Join(ts.dir, "target")
			publish := func() {
				t.Helper()
				if _, err := ts.node.NodePublishVolume(ctx, publishRequest("vol", target)); err != nil {
					t.Fatalf("NodePublishVolume: %v", err)
				}
			}
			unpublish := func() {
				t.Helper()
				if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: target}); err != nil {
					t.Fatal(err)
				}
			}
			publish()
			big := filepath.Join(target, "big")
			if _, err := writeFile(big, int(tc.size)+(8<<20)); !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("writing past the size: %v, want ENOSPC", err)
			}
			if err := os.Remove(big); err != nil {
				t.Fatal(err)
			}
			var st unix.Statfs_t
			if err := unix.Statfs(target, &st); err != nil {
				t.Fatal(err)
			}
			room := int64(st.Bavail) * st.Bsize

			exp, err := ts.controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
				VolumeId: "vol", CapacityRange: &csi.CapacityRange{RequiredBytes: tc.grown},
			})
			if err != nil || !exp.GetNodeExpansionRequired() || exp.GetCapacityBytes() != tc.grown {
				t.Fatalf("ControllerExpandVolume: %v, %v; want %d bytes and a node step", exp, err, tc.grown)
			}
			_, err = ts.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: "vol", VolumePath: target})
			if tc.growsOnline {
				if err != nil {
					t.Fatalf("NodeExpandVolume while published: %v", err)
				}
			} else {
				if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "CAP_SYS_RESOURCE") {
					t.Fatalf("NodeExpandVolume while published, without CAP_SYS_RESOURCE: %v, want FailedPrecondition naming it", err)
				}
				// No pod has it now: the next publish grows it offline.
				unpublish()
				publish()
				if _, err := ts.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: "vol", VolumePath: target}); err != nil {
					t.Fatalf("NodeExpandVolume after the offline growth: %v", err)
				}
			}
			// The pod's mount sees the larger file system: more fits than
			// there was room for before.
			fill := room + (tc.grown-tc.size)/2
			if _, err := writeFile(big, int(fill)); err != nil {
				t.Fatalf("writing %d bytes after growing to %d: %v", fill, tc.grown, err)
			}
			stats, err := ts.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "vol", VolumePath: target})
			if err != nil {
				t.Fatal(err)
			}
			if u := stats.GetUsage()[0]; u.GetTotal() != tc.grown || u.GetUsed() < fill || u.GetAvailable() > tc.grown-fill {
				t.Errorf("stats after writing %d bytes into %d: %v", fill, tc.grown, u)
			}

			unpublish()
			if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol"}); err != nil {
				t.Fatalf("DeleteVolume: %v", err)
			}
			for _, p := range []string{img, filepath.Join(ts.dataRoot, volumesDir, "vol")} {
				if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s left after DeleteVolume: %v", p, err)
				}
			}
			waitNoLoop(t, img)
		})
	}
}

// TestImageVolumeAfterRestart restarts the agent while a pod has the
// volume mounted, as a container restart does: the agent's own mount is
// gone, the pod's is not. The new agent must mount the same file system
// again, through the loop device the pod keeps, never a second device over
// the same image.
func TestImageVolumeAfterRestart(t *testing.T) {
	requireImages(t)
	cfg := testConfig(t)
	ts := startServer(t, cfg)
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, imageRequest("vol", 8<<20)); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(ts.dir, "target")
	if _, err := ts.node.NodePublishVolume(ctx, publishRequest("vol", target)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "data"), []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts.stop()
	mountPoint := filepath.Join(cfg.DataRoot, volumesDir, "vol")
	if err := unix.Unmount(mountPoint, 0); err != nil {
		t.Fatalf("taking the agent's mount away: %v", err)
	}

	ts = startServer(t, cfg)
	img := filepath.Join(cfg.DataRoot, imagesDir, "vol")
	if devs := loopsHolding(t, img); len(devs) != 1 {
		t.Fatalf("loop devices over the image after the restart: %v, want exactly one", devs)
	}
	if !ts.isMounted(t, "vol", target) {
		t.Error("the pod's mount is not the file system the agent mounted again")
	}
	if b, err := os.ReadFile(filepath.Join(mountPoint, "data")); err != nil || string(b) != "kept" {
		t.Errorf("data through the agent's mount: %q, %v", b, err)
	}
	if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: target}); err != nil {
		t.Fatalf("NodeUnpublishVolume after the restart: %v", err)
	}
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol"}); err != nil {
		t.Fatal(err)
	}
	waitNoLoop(t, img)
}

// TestImageVolumeUnavailableAlone: an image that cannot be mounted at start
// makes its own volume unavailable, not the agent.
func TestImageVolumeUnavailableAlone(t *testing.T) {
	requireImages(t)
	cfg := testConfig(t)
	ts := startServer(t, cfg)
	ctx := testContext(t)
	for _, name := range []string{"good", "bad"} {
		if _, err := ts.controller.CreateVolume(ctx, imageRequest(name, 8<<20)); err != nil {
			t.Fatal(err)
		}
	}
	ts.stop()
	for _, name := range []string{"good", "bad"} {
		if err := unix.Unmount(filepath.Join(cfg.DataRoot, volumesDir, name), 0); err != nil {
			t.Fatal(err)
		}
	}
	waitNoLoop(t, filepath.Join(cfg.DataRoot, imagesDir, "bad"))
	// Wipe the bad one's superblock.
	if err := os.WriteFile(filepath.Join(cfg.DataRoot, imagesDir, "bad"), make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	ts = startServer(t, cfg)
	if _, err := ts.node.NodePublishVolume(ctx, publishRequest("good", filepath.Join(ts.dir, "good"))); err != nil {
		t.Errorf("publishing the good volume: %v", err)
	}
	_, err := ts.node.NodePublishVolume(ctx, publishRequest("bad", filepath.Join(ts.dir, "bad")))
	if !strings.Contains(err.Error(), "cannot set it up") {
		t.Errorf("publishing the volume whose image is wiped: %v, want unavailable with the reason", err)
	}
}

func TestImageCrashConsistency(t *testing.T) {
	requireImages(t)
	testCrashConsistency(t, BackendImage, func(t *testing.T) string { return filepath.Join(testConfig(t).DataRoot) })
}

// TestImageSanity runs csi-sanity on image volumes (10 GiB sparse images),
// in a child process as TestBtrfsSanity does.
func TestImageSanity(t *testing.T) {
	if inSanityChild() {
		runSanity(t, testConfig(t), ParamVolumeType, VolumeTypeImage)
		return
	}
	requireImages(t)
	runInSanityChild(t)
}

// A class names an image volume with volumeType, or by naming a file
// system, in either key; the size is raised to the file system's least.
func TestImageParameters(t *testing.T) {
	for _, tc := range []struct {
		params    map[string]string
		image     bool
		fsType    string
		ask, size int64
	}{
		{map[string]string{}, false, "", 1 << 20, 1 << 20},
		{map[string]string{ParamVolumeType: VolumeTypeImage}, true, FsExt4, 1 << 20, 1 << 20},
		{map[string]string{ParamFsType: FsXFS}, true, FsXFS, 1 << 20, 300 << 20},
		{map[string]string{"csi.storage.k8s.io/fstype": FsExt4}, true, FsExt4, 1 << 20, 1 << 20},
		{map[string]string{ParamVolumeType: VolumeTypeImage, ParamFsType: FsXFS}, true, FsXFS, 1 << 30, 1 << 30},
	} {
		req := createRequest("vol")
		req.Parameters = tc.params
		req.CapacityRange.RequiredBytes = tc.ask
		spec, err := createSpec(req)
		if err != nil || spec.Params.Image != tc.image || spec.Params.FsType != tc.fsType || spec.Size != tc.size {
			t.Errorf("%v asking %d: image %t, fsType %q, size %d, %v; want %t, %q, %d",
				tc.params, tc.ask, spec.Params.Image, spec.Params.FsType, spec.Size, err, tc.image, tc.fsType, tc.size)
		}
	}
	req := createRequest("vol")
	req.Parameters = map[string]string{ParamFsType: FsXFS}
	req.CapacityRange.LimitBytes = 100 << 20
	if _, err := createSpec(req); status.Code(err) != codes.OutOfRange {
		t.Errorf("xfs with limit_bytes below its least size: %v, want OutOfRange", err)
	}
}
