package driver

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// TestBadInput sends requests a buggy or hostile caller could send and
// checks each gets the right code, a message that says what is wrong, and
// leaves the files under the test directory (data root, targets, socket)
// exactly as they were, and creates nothing at the paths it names outside.
func TestBadInput(t *testing.T) {
	testutil.RequireRoot(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)

	// An existing volume for the requests that need one, a directory for
	// targets, a file where a target directory should be and a symlink
	// from the targets directory into the data root.
	const existing = "pvc-0b6c6a4e-2f1d-4c55-9d7e-6d1f0f4d8a11"
	if _, err := ts.controller.CreateVolume(ctx, createRequest(existing)); err != nil {
		t.Fatal(err)
	}
	targets := filepath.Join(ts.dir, "pods")
	mustMkdir(t, targets)
	if err := os.WriteFile(filepath.Join(targets, "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(ts.dataRoot, volumesDir), filepath.Join(targets, "link")); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(filepath.Dir(ts.dir), "escaped")

	capWith := func(mode csi.VolumeCapability_AccessMode_Mode) []*csi.VolumeCapability {
		return []*csi.VolumeCapability{mountCapability(mode)}
	}
	block := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	createSnapshot := func(name, src string, params map[string]string) func() error {
		return func() error {
			_, err := ts.controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: src, Parameters: params})
			return err
		}
	}
	create := func(change func(*csi.CreateVolumeRequest)) func() error {
		return func() error {
			req := createRequest("pvc-new")
			change(req)
			_, err := ts.controller.CreateVolume(ctx, req)
			return err
		}
	}
	publish := func(id, target string, change func(*csi.NodePublishVolumeRequest)) func() error {
		return func() error {
			req := publishRequest(id, target)
			if change != nil {
				change(req)
			}
			_, err := ts.node.NodePublishVolume(ctx, req)
			return err
		}
	}
	// ephemeral makes a publish request one for an inline volume with the
	// attributes attrs, as kubelet sends it.
	ephemeral := func(attrs map[string]string) func(*csi.NodePublishVolumeRequest) {
		return func(r *csi.NodePublishVolumeRequest) {
			r.VolumeContext = map[string]string{"csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/pod.name": "p"}
			maps.Copy(r.VolumeContext, attrs)
		}
	}
	params := func(p map[string]string) func(*csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) { r.Parameters = p }
	}
	mountFlags := func(flags ...string) func(*csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities[0] = withMountFlags(rwo, flags...) }
	}

	for _, tc := range []struct {
		name         string
		call         func() error
		code         codes.Code
		msg          string
		mustNotExist []string
	}{
		{"create: empty name", create(func(r *csi.CreateVolumeRequest) { r.Name = "" }),
			codes.InvalidArgument, "name is required", nil},
		{"create: parent traversal", create(func(r *csi.CreateVolumeRequest) { r.Name = "../escaped" }),
			codes.InvalidArgument, "is not valid", []string{filepath.Join(ts.dataRoot, "escaped")}},
		{"create: deep traversal", create(func(r *csi.CreateVolumeRequest) { r.Name = "../../../escaped" }),
			codes.InvalidArgument, "is not valid", []string{outside}},
		{"create: slash in name", create(func(r *csi.CreateVolumeRequest) { r.Name = "a/b" }),
			codes.InvalidArgument, "is not valid", nil},
		{"create: absolute name", create(func(r *csi.CreateVolumeRequest) { r.Name = outside }),
			codes.InvalidArgument, "is not valid", []string{outside}},
		{"create: hidden name", create(func(r *csi.CreateVolumeRequest) { r.Name = ".tmp-x" }),
			codes.InvalidArgument, "must start with a letter or digit", nil},
		{"create: dot-dot name", create(func(r *csi.CreateVolumeRequest) { r.Name = ".." }),
			codes.InvalidArgument, "is not valid", nil},
		{"create: NUL in name", create(func(r *csi.CreateVolumeRequest) { r.Name = "pvc\x00x" }),
			codes.InvalidArgument, "is not valid", nil},
		{"create: name too long", create(func(r *csi.CreateVolumeRequest) { r.Name = strings.Repeat("a", 129) }),
			codes.InvalidArgument, "at most 128", nil},
		{"create: no capabilities", create(func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = nil }),
			codes.InvalidArgument, "capabilities are required", nil},
		{"create: nil capability", create(func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = []*csi.VolumeCapability{{}} }),
			codes.InvalidArgument, "mount or the block access type", nil},
		{"create: ReadWriteMany", create(func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = capWith(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
		}), codes.InvalidArgument, "hostpath volumes are node-local", nil},
		{"create: ReadOnlyMany across nodes", create(func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = capWith(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)
		}), codes.InvalidArgument, "hostpath volumes are node-local", nil},
		{"create: MULTI_NODE_SINGLE_WRITER among valid ones", create(func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = append(r.VolumeCapabilities, capWith(csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER)...)
		}), codes.InvalidArgument, "node-local", nil},
		{"create: block and mount", create(func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = append(r.VolumeCapabilities, block) }),
			codes.InvalidArgument, "mix the block and the mount access types", nil},
		{"create: block with a file system", create(func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{block}
			r.Parameters = map[string]string{"csi.storage.k8s.io/fstype": FsXFS}
		}), codes.InvalidArgument, "block volumes are raw devices without a file system", nil},
		{"create: block above its limit once in sectors", create(func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{block}
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 1000, LimitBytes: 1000}
		}), codes.OutOfRange, "rounds up to 1024", nil},
		{"create: block for an existing mount volume", create(func(r *csi.CreateVolumeRequest) {
			r.Name = existing
			r.VolumeCapabilities = []*csi.VolumeCapability{block}
		}), codes.AlreadyExists, "it is a file system volume, the request asks for a block volume", nil},
		{"create: unknown parameter", create(params(map[string]string{"type": "ssd"})),
			codes.InvalidArgument, `accepted parameters are "directoryMode", "sizeEnforcement", "pool", "volumeType", "fsType" and keys under "csi.storage.k8s.io/"`, nil},
		{"create: unknown volume type", create(params(map[string]string{ParamVolumeType: "block"})),
			codes.InvalidArgument, `volumeType="block": the only type is "image"`, nil},
		{"create: file system not supported", create(params(map[string]string{ParamVolumeType: VolumeTypeImage, ParamFsType: "vfat"})),
			codes.InvalidArgument, `fsType="vfat": image volumes can be formatted ext4, xfs`, nil},
		{"create: standard file system key, not supported", create(params(map[string]string{ParamVolumeType: VolumeTypeImage, "csi.storage.k8s.io/fstype": "btrfs"})),
			codes.InvalidArgument, `csi.storage.k8s.io/fstype="btrfs"`, nil},
		{"create: pool not a DNS label", create(params(map[string]string{ParamPool: "Fast_1"})),
			codes.InvalidArgument, `parameter pool: pool name "Fast_1" is not valid`, nil},
		{"create: pool empty", create(params(map[string]string{ParamPool: ""})),
			codes.InvalidArgument, `parameter pool: pool name "" is not valid`, nil},
		{"create: directoryMode not octal", create(params(map[string]string{ParamDirectoryMode: "0999"})),
			codes.InvalidArgument, "not an octal permission", nil},
		{"create: directoryMode symbolic", create(params(map[string]string{ParamDirectoryMode: "rwxr-xr-x"})),
			codes.InvalidArgument, "not an octal permission", nil},
		{"create: directoryMode setgid", create(params(map[string]string{ParamDirectoryMode: "2775"})),
			codes.InvalidArgument, "setuid, setgid and sticky bits are not allowed", nil},
		{"create: directoryMode empty", create(params(map[string]string{ParamDirectoryMode: ""})),
			codes.InvalidArgument, "not an octal permission", nil},
		{"create: negative required", create(func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = -1 }),
			codes.InvalidArgument, "must not be negative", nil},
		{"create: negative limit", create(func(r *csi.CreateVolumeRequest) { r.CapacityRange.LimitBytes = -1 }),
			codes.InvalidArgument, "must not be negative", nil},
		{"create: limit below required", create(func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 2 << 20, LimitBytes: 1 << 20}
		}), codes.InvalidArgument, "larger than limit_bytes", nil},
		{"create: over capacity", create(func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 200 << 30 }),
			codes.ResourceExhausted, "not enough capacity", nil},
		{"create: other node required", create(func(r *csi.CreateVolumeRequest) {
			r.AccessibilityRequirements = &csi.TopologyRequirement{
				Requisite: []*csi.Topology{{Segments: map[string]string{TopologyKey: "node-2"}}},
			}
		}), codes.ResourceExhausted, `only make volumes on node "node-1"`, nil},
		{"create: from snapshot", create(func(r *csi.CreateVolumeRequest) {
			r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "snap"},
			}}
		}), codes.NotFound, "snapshot snap is not a snapshot of node node-1", nil},
		{"create: from a snapshot with a bad ID", create(func(r *csi.CreateVolumeRequest) {
			r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "../snap"},
			}}
		}), codes.InvalidArgument, "volume_content_source.snapshot.snapshot_id", nil},
		{"snapshot: no name", createSnapshot("", existing, nil), codes.InvalidArgument, "name is required", nil},
		{"snapshot: traversal name", createSnapshot("../x", existing, nil), codes.InvalidArgument, "is not valid", nil},
		{"snapshot: no source", createSnapshot("snap", "", nil), codes.InvalidArgument, "source_volume_id is required", nil},
		{"snapshot: missing source", createSnapshot("snap", "pvc-none", nil), codes.NotFound, "source volume pvc-none is not a volume of node node-1", nil},
		{"snapshot: parameter", createSnapshot("snap", existing, map[string]string{"type": "fast"}),
			codes.InvalidArgument, `unknown VolumeSnapshotClass parameter "type"`, nil},
		{"snapshot: over capacity", func() error {
			// The existing volume's 1 MiB fits; a second volume takes
			// the rest, so its copy does not.
			big := createRequest("pvc-big")
			big.CapacityRange.RequiredBytes = 100<<30 - 2<<20
			if _, err := ts.controller.CreateVolume(ctx, big); err != nil {
				return err
			}
			defer func() { _, _ = ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "pvc-big"}) }()
			return createSnapshot("snap", "pvc-big", nil)()
		}, codes.ResourceExhausted, "not enough capacity", nil},
		{"delete snapshot: no ID", func() error {
			_, err := ts.controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{})
			return err
		}, codes.InvalidArgument, "snapshot ID is required", nil},
		{"list snapshots: foreign token", func() error {
			_, err := ts.controller.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: "7"})
			return err
		}, codes.Aborted, "was not returned by ListSnapshots", nil},
		{"create: file system mount option", create(mountFlags("noexec", "size=1G")),
			codes.InvalidArgument, `"size=1G" is not supported`, nil},
		{"create: uid mount option", create(mountFlags("uid=0")),
			codes.InvalidArgument, "takes only the options ro, rw, noatime, nodev, nodiratime, noexec, nosuid, relatime, strictatime", nil},
		{"create: bind mount option", create(mountFlags("bind")),
			codes.InvalidArgument, `"bind" is not supported`, nil},
		{"create: ro and rw", create(mountFlags("ro", "rw")),
			codes.InvalidArgument, "contradict", nil},
		{"create: two atime options", create(mountFlags("noatime", "strictatime")),
			codes.InvalidArgument, "at most one of noatime, relatime, strictatime", nil},
		{"create: existing name, other size", create(func(r *csi.CreateVolumeRequest) {
			r.Name = existing
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 5 << 20}
		}), codes.AlreadyExists, "different parameters", nil},
		{"delete: traversal to an existing volume", func() error {
			_, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "../volumes/" + existing})
			return err
		}, codes.InvalidArgument, "is not valid", nil},
		{"delete: empty ID", func() error {
			_, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{})
			return err
		}, codes.InvalidArgument, "volume ID is required", nil},
		{"validate: traversal", func() error {
			_, err := ts.controller.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{
				VolumeId: "../meta", VolumeCapabilities: []*csi.VolumeCapability{rwo}})
			return err
		}, codes.InvalidArgument, "is not valid", nil},
		{"list: foreign token", func() error {
			_, err := ts.controller.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "2"})
			return err
		}, codes.Aborted, "start again", nil},
		{"publish: traversal ID", publish("../../../escaped", filepath.Join(targets, "t"), nil),
			codes.InvalidArgument, "is not valid", []string{outside, filepath.Join(targets, "t")}},
		{"publish: unknown volume", publish("pvc-unknown", filepath.Join(targets, "t"), nil),
			codes.NotFound, "volume not found", []string{filepath.Join(targets, "t")}},
		{"publish: relative target", publish(existing, "pods/t", nil),
			codes.InvalidArgument, "must be absolute", nil},
		{"publish: target with ..", publish(existing, targets+"/../../escaped", nil),
			codes.InvalidArgument, "is not clean", []string{outside}},
		{"publish: target with trailing slash", publish(existing, targets+"/t/", nil),
			codes.InvalidArgument, "is not clean", []string{filepath.Join(targets, "t")}},
		{"publish: target /", publish(existing, "/", nil),
			codes.InvalidArgument, "must not be /", nil},
		{"publish: target inside the data root", publish(existing, filepath.Join(ts.dataRoot, volumesDir, "x"), nil),
			codes.InvalidArgument, "must not be inside the data root", nil},
		{"publish: target above the data root", publish(existing, ts.dir, nil),
			codes.InvalidArgument, "or contain it", nil},
		{"publish: target through a symlink into the data root", publish(existing, filepath.Join(targets, "link", "x"), nil),
			codes.InvalidArgument, "must not be inside the data root", []string{filepath.Join(ts.dataRoot, volumesDir, "x")}},
		{"publish: parent missing", publish(existing, filepath.Join(targets, "missing", "t"), nil),
			codes.FailedPrecondition, "parent directory", []string{filepath.Join(targets, "missing")}},
		{"publish: target is a file", publish(existing, filepath.Join(targets, "file"), nil),
			codes.InvalidArgument, "not a directory", nil},
		{"publish: no capability", publish(existing, filepath.Join(targets, "t"), func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability = nil
		}), codes.InvalidArgument, "volume capability is required", []string{filepath.Join(targets, "t")}},
		{"publish: file system mount option", publish(existing, filepath.Join(targets, "t"), func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability = withMountFlags(rwo, "nosuid", "mode=0777")
		}), codes.InvalidArgument, `"mode=0777" is not supported`, []string{filepath.Join(targets, "t")}},
		{"publish: propagation mount option", publish(existing, filepath.Join(targets, "t"), func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability = withMountFlags(rwo, "rshared")
		}), codes.InvalidArgument, `"rshared" is not supported`, []string{filepath.Join(targets, "t")}},
		{"publish: ReadWriteMany", publish(existing, filepath.Join(targets, "t"), func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability = mountCapability(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
		}), codes.InvalidArgument, "node-local", []string{filepath.Join(targets, "t")}},
		{"publish: block access type for a file system volume", publish(existing, filepath.Join(targets, "t"), func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability = block
		}), codes.InvalidArgument, "is a file system volume, and the request has the block access type", []string{filepath.Join(targets, "t")}},
		{"ephemeral: size not a quantity", publish("csi-e1", filepath.Join(targets, "t"), ephemeral(map[string]string{AttrSize: "lots"})),
			codes.InvalidArgument, `size="lots" is not a quantity`, []string{filepath.Join(targets, "t")}},
		{"ephemeral: size zero", publish("csi-e1", filepath.Join(targets, "t"), ephemeral(map[string]string{AttrSize: "0"})),
			codes.InvalidArgument, "must be positive", []string{filepath.Join(targets, "t")}},
		{"ephemeral: unknown attribute", publish("csi-e1", filepath.Join(targets, "t"), ephemeral(map[string]string{"type": "ssd"})),
			codes.InvalidArgument, `inline volume attributes (besides size): unknown StorageClass parameter "type"`, []string{filepath.Join(targets, "t")}},
		{"ephemeral: more than the node has", publish("csi-e1", filepath.Join(targets, "t"), ephemeral(map[string]string{AttrSize: "200Gi"})),
			codes.ResourceExhausted, "making inline ephemeral volume csi-e1 on node node-1: not enough capacity", []string{filepath.Join(targets, "t")}},
		{"ephemeral: block", publish("csi-e1", filepath.Join(targets, "t"), func(r *csi.NodePublishVolumeRequest) {
			ephemeral(nil)(r)
			r.VolumeCapability = block
		}), codes.InvalidArgument, "an inline ephemeral volume is a file system", []string{filepath.Join(targets, "t")}},
		{"ephemeral: the ID of a persistent volume", publish(existing, filepath.Join(targets, "t"), ephemeral(nil)),
			codes.AlreadyExists, "it is a persistent volume, the request asks for an inline ephemeral volume", []string{filepath.Join(targets, "t")}},
		{"unpublish: relative target", func() error {
			_, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: existing, TargetPath: "t"})
			return err
		}, codes.InvalidArgument, "must be absolute", nil},
		{"unpublish: traversal ID", func() error {
			_, err := ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "a/../b", TargetPath: targets})
			return err
		}, codes.InvalidArgument, "is not valid", nil},
		{"stats: path not published", func() error {
			_, err := ts.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: existing, VolumePath: targets})
			return err
		}, codes.NotFound, "not published at", nil},
		{"stats: traversal ID", func() error {
			_, err := ts.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "..", VolumePath: targets})
			return err
		}, codes.InvalidArgument, "is not valid", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshotTree(t, ts.dir)
			err := tc.call()
			if got := status.Code(err); got != tc.code {
				t.Fatalf("code = %v, want %v (error: %v)", got, tc.code, err)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tc.msg) {
				t.Errorf("message %q does not say %q", msg, tc.msg)
			}
			if diff := diffTrees(before, snapshotTree(t, ts.dir)); diff != "" {
				t.Errorf("files changed:\n%s", diff)
			}
			for _, p := range tc.mustNotExist {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was created", p)
				}
			}
		})
	}
	if got := ts.Allocated(); got != 1<<20 {
		t.Errorf("allocated = %d after the bad requests, want only the existing volume's %d", got, 1<<20)
	}
}

func mustMkdir(tb testing.TB, p string) {
	tb.Helper()
	if err := os.Mkdir(p, 0o755); err != nil {
		tb.Fatal(err)
	}
}

// snapshotTree describes every file under dir: type, permission and, for
// regular files, a hash of the content.
func snapshotTree(tb testing.TB, dir string) map[string]string {
	tb.Helper()
	tree := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		desc := info.Mode().String()
		if info.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %x", sha256.Sum256(data))
		}
		tree[p] = desc
		return nil
	})
	if err != nil {
		tb.Fatalf("walking %s: %v", dir, err)
	}
	return tree
}

func diffTrees(before, after map[string]string) string {
	var b strings.Builder
	for p, d := range before {
		if a, ok := after[p]; !ok {
			fmt.Fprintf(&b, "removed %s\n", p)
		} else if a != d {
			fmt.Fprintf(&b, "changed %s: %s -> %s\n", p, d, a)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			fmt.Fprintf(&b, "created %s\n", p)
		}
	}
	return b.String()
}
