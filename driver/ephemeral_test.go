package driver

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// inlineRequest is a NodePublishVolumeRequest as kubelet sends it for an
// inline volume of pod uid with attributes attrs: the target is
// pods/<uid>/volumes/kubernetes.io~csi/scratch/mount under dir, and the
// parent is made, as kubelet makes it.
func inlineRequest(t *testing.T, dir, uid string, attrs map[string]string) *csi.NodePublishVolumeRequest {
	t.Helper()
	parent := filepath.Join(dir, "pods", uid, "volumes", "kubernetes.io~csi", "scratch")
	if err := os.MkdirAll(parent, 0o750); err != nil {
		t.Fatal(err)
	}
	vctx := map[string]string{
		"csi.storage.k8s.io/ephemeral":     "true",
		"csi.storage.k8s.io/pod.name":      "web-0",
		"csi.storage.k8s.io/pod.namespace": "default",
		"csi.storage.k8s.io/pod.uid":       uid,
	}
	for k, v := range attrs {
		vctx[k] = v
	}
	return &csi.NodePublishVolumeRequest{
		VolumeId:         "csi-" + uid,
		TargetPath:       filepath.Join(parent, "mount"),
		VolumeCapability: mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
		VolumeContext:    vctx,
	}
}

// TestEphemeralVolume follows an inline volume through its pod's life: the
// publish makes it with the size its attributes ask for, counted against
// the node's room; the pod writes to it; the unpublish deletes it and
// gives the room back.
func TestEphemeralVolume(t *testing.T) {
	testutil.RequireRoot(t) // bind mounts
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	req := inlineRequest(t, ts.dir, "0001", map[string]string{AttrSize: "64Mi", ParamDirectoryMode: "0750"})
	for range 2 { // a retry finds it published
		if _, err := ts.node.NodePublishVolume(ctx, req); err != nil {
			t.Fatalf("NodePublishVolume: %v", err)
		}
	}
	if a := ts.Allocated(); a != 64<<20 {
		t.Errorf("allocated %d, want the 64 MiB the inline volume asks for", a)
	}
	if err := os.WriteFile(filepath.Join(req.GetTargetPath(), "data"), []byte("scratch"), 0o600); err != nil {
		t.Fatalf("writing into the inline volume: %v", err)
	}
	fi, err := os.Stat(req.GetTargetPath())
	if err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("target %v, %v; want mode 0750 from directoryMode", fi, err)
	}
	list, err := ts.controller.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(list.GetEntries()) != 1 || list.GetEntries()[0].GetVolume().GetVolumeContext()[VolumeContextEphemeral] != "true" {
		t.Errorf("ListVolumes: %v, %v; want the inline volume, marked ephemeral", list, err)
	}
	// A CreateVolume of its name is not the same volume.
	if _, err := ts.controller.CreateVolume(ctx, createRequest(req.GetVolumeId())); status.Code(err) != codes.AlreadyExists {
		t.Errorf("CreateVolume with the inline volume's ID: %v, want AlreadyExists", err)
	}

	unpublish := &csi.NodeUnpublishVolumeRequest{VolumeId: req.GetVolumeId(), TargetPath: req.GetTargetPath()}
	for range 2 { // a retry finds it gone
		if _, err := ts.node.NodeUnpublishVolume(ctx, unpublish); err != nil {
			t.Fatalf("NodeUnpublishVolume: %v", err)
		}
	}
	if vols := ts.Volumes(); len(vols) != 0 {
		t.Errorf("volumes after the unpublish: %v, want none", vols)
	}
	if a := ts.Allocated(); a != 0 {
		t.Errorf("allocated %d after the unpublish, want 0", a)
	}
	assertEmpty(t, filepath.Join(ts.dataRoot, volumesDir))
}

// TestEphemeralVolumeRefused checks that an inline volume that cannot be
// made or published leaves nothing behind: no room is ResourceExhausted,
// a target that cannot be mounted deletes the volume just made.
func TestEphemeralVolumeRefused(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := testConfig(t)
	cfg.Capacity = 32 << 20
	ts := startServer(t, cfg)
	ctx := testContext(t)

	big := inlineRequest(t, ts.dir, "0001", map[string]string{AttrSize: "1Gi"})
	_, err := ts.node.NodePublishVolume(ctx, big)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "1073741824 bytes requested") {
		t.Errorf("inline volume larger than the node: %v, want ResourceExhausted saying how much was asked", err)
	}
	// The target is a file: the volume is made, then cannot be mounted.
	bad := inlineRequest(t, ts.dir, "0002", map[string]string{AttrSize: "1Mi"})
	if err := os.WriteFile(bad.GetTargetPath(), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.node.NodePublishVolume(ctx, bad); status.Code(err) != codes.InvalidArgument {
		t.Errorf("inline volume on a file target: %v, want InvalidArgument", err)
	}
	if vols := ts.Volumes(); len(vols) != 0 {
		t.Errorf("volumes after refused inline volumes: %v, want none", vols)
	}
	if a := ts.Allocated(); a != 0 {
		t.Errorf("allocated %d after refused inline volumes, want 0", a)
	}
	assertEmpty(t, filepath.Join(ts.dataRoot, volumesDir))
	if _, err := os.Lstat(big.GetTargetPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target of the refused volume: %v, want none", err)
	}
}

// TestEphemeralVolumeSweep restarts the agent after one pod went away
// without an unpublish (kubelet tore its volume directory down) and
// another's volume was made but its target never recorded (the agent
// stopped in between), while a third pod still runs: the first two
// volumes are deleted, the third kept.
func TestEphemeralVolumeSweep(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := testConfig(t)
	ts := startServer(t, cfg)
	ctx := testContext(t)
	gone := inlineRequest(t, ts.dir, "0001", nil)
	running := inlineRequest(t, ts.dir, "0002", nil)
	cut := inlineRequest(t, ts.dir, "0003", nil)
	for _, r := range []*csi.NodePublishVolumeRequest{gone, running, cut} {
		if _, err := ts.node.NodePublishVolume(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	ts.stop()
	if err := unix.Unmount(gone.GetTargetPath(), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(ts.dir, "pods", "0001")); err != nil {
		t.Fatal(err)
	}
	// As if the agent had stopped between making the volume and recording
	// its target.
	if err := unix.Unmount(cut.GetTargetPath(), 0); err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(cfg.DataRoot, metaDir, cut.GetVolumeId()+recordExt)
	var v Volume
	b, err := os.ReadFile(record)
	if err == nil {
		err = json.Unmarshal(b, &v)
	}
	if err != nil {
		t.Fatal(err)
	}
	v.Targets = nil
	if b, err = json.Marshal(v); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(record, b, 0o600); err != nil {
		t.Fatal(err)
	}

	ts = startServer(t, cfg)
	vols := ts.Volumes()
	if len(vols) != 1 || vols[0].ID != running.GetVolumeId() {
		t.Fatalf("volumes after the restart: %v, want only %s", vols, running.GetVolumeId())
	}
	if a := ts.Allocated(); a != DefaultVolumeSize {
		t.Errorf("allocated %d, want the running pod's %d", a, DefaultVolumeSize)
	}
	// Kubelet's unpublish of the gone pod's volume, should it come, finds
	// nothing to do.
	if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: gone.GetVolumeId(), TargetPath: gone.GetTargetPath()}); err != nil {
		t.Errorf("NodeUnpublishVolume of the swept volume: %v", err)
	}
	if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: running.GetVolumeId(), TargetPath: running.GetTargetPath()}); err != nil {
		t.Fatal(err)
	}
	if vols := ts.Volumes(); len(vols) != 0 {
		t.Errorf("volumes at the end: %v, want none", vols)
	}
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 0 {
		t.Errorf("%s: %d entries (%v), want none", dir, len(entries), err)
	}
}

// TestEphemeralImageVolume makes an inline volume with a file system of its
// own (volumeType: image), as an attribute asks: its size is a limit the
// pod hits, and the unpublish leaves no image or loop device.
func TestEphemeralImageVolume(t *testing.T) {
	requireImages(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	req := inlineRequest(t, ts.dir, "0001", map[string]string{AttrSize: "16Mi", ParamVolumeType: VolumeTypeImage})
	if _, err := ts.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	if _, err := writeFile(filepath.Join(req.GetTargetPath(), "big"), 32<<20); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("writing past the inline volume's size: %v, want ENOSPC", err)
	}
	if _, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.GetVolumeId(), TargetPath: req.GetTargetPath()}); err != nil {
		t.Fatalf("NodeUnpublishVolume: %v", err)
	}
	img := filepath.Join(ts.dataRoot, imagesDir, req.GetVolumeId())
	if _, err := os.Lstat(img); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("image left after the unpublish: %v", err)
	}
	waitNoLoop(t, img)
	if vols := ts.Volumes(); len(vols) != 0 {
		t.Errorf("volumes after the unpublish: %v, want none", vols)
	}
}
