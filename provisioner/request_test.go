package provisioner

import (
	"maps"
	"math"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

func TestVolumeCapabilities(t *testing.T) {
	for _, tc := range []struct {
		name    string
		modes   []v1.PersistentVolumeAccessMode
		want    []csi.VolumeCapability_AccessMode_Mode
		refusal string // part of the error, "" for success
	}{
		{"RWO is one node, many pods", []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
			[]csi.VolumeCapability_AccessMode_Mode{csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER}, ""},
		{"RWOP is one pod", []v1.PersistentVolumeAccessMode{v1.ReadWriteOncePod},
			[]csi.VolumeCapability_AccessMode_Mode{csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER}, ""},
		{"both", []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce, v1.ReadWriteOncePod},
			[]csi.VolumeCapability_AccessMode_Mode{
				csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
				csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER}, ""},
		{"RWX refused", []v1.PersistentVolumeAccessMode{v1.ReadWriteMany}, nil, "ReadWriteMany needs shared storage"},
		{"ROX refused", []v1.PersistentVolumeAccessMode{v1.ReadOnlyMany}, nil, "ReadOnlyMany needs shared storage"},
		{"RWO with RWX refused", []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce, v1.ReadWriteMany}, nil, "ReadWriteMany"},
		{"none refused", nil, nil, "no accessModes"},
		{"unknown refused", []v1.PersistentVolumeAccessMode{"ReadWriteSometimes"}, nil, "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			caps, err := volumeCapabilities(tc.modes, []string{"noatime"}, false)
			if tc.refusal != "" {
				if err == nil || !strings.Contains(err.Error(), tc.refusal) {
					t.Fatalf("error %v, want one containing %q", err, tc.refusal)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(caps) != len(tc.want) {
				t.Fatalf("%d capabilities, want %d", len(caps), len(tc.want))
			}
			for i, c := range caps {
				if c.GetAccessMode().GetMode() != tc.want[i] {
					t.Errorf("capability %d: mode %s, want %s", i, c.GetAccessMode().GetMode(), tc.want[i])
				}
				if c.GetMount() == nil || c.GetMount().GetFsType() != "" || c.GetMount().GetMountFlags()[0] != "noatime" {
					t.Errorf("capability %d: access type %v, want a mount with the class' mount options", i, c.GetAccessType())
				}
			}
		})
	}
}

func TestCreateVolumeRequest(t *testing.T) {
	p := &Provisioner{nodeName: "node-a", topologyKey: "topo/node"}
	claim := testClaim("data-web-0", "node-a", "1Gi", v1.ReadWriteOnce)
	claim.Spec.Resources.Limits = v1.ResourceList{v1.ResourceStorage: resource.MustParse("2Gi")}
	sc := &storagev1.StorageClass{
		ObjectMeta:  metav1.ObjectMeta{Name: "stickyvol"},
		Parameters:  map[string]string{"directoryMode": "0750", ParamPVCName: "spoofed", ParamNodeLossPolicy: NodeLossRecreate},
		Provisioner: "hostpath.stickyvol.dev",
	}
	req, err := p.createVolumeRequest(controller.ProvisionOptions{
		StorageClass: sc, PVName: "pvc-123", PVC: claim, SelectedNodeName: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	if req.Name != "pvc-123" {
		t.Errorf("name %q, want the PV name", req.Name)
	}
	if req.CapacityRange.RequiredBytes != 1<<30 || req.CapacityRange.LimitBytes != 2<<30 {
		t.Errorf("capacity range %v, want 1Gi..2Gi", req.CapacityRange)
	}
	wantParams := map[string]string{"directoryMode": "0750", ParamPVCName: "data-web-0",
		ParamPVCNamespace: "default", ParamPVName: "pvc-123"}
	// nodeLossPolicy is the provisioner's and the node-loss duty's; the
	// driver would refuse it as unknown.
	if !maps.Equal(req.Parameters, wantParams) {
		t.Errorf("parameters %v, want %v", req.Parameters, wantParams)
	}
	if sc.Parameters[ParamPVCName] != "spoofed" {
		t.Error("the StorageClass' parameters were modified")
	}
	for _, topos := range [][]*csi.Topology{req.AccessibilityRequirements.Requisite, req.AccessibilityRequirements.Preferred} {
		if len(topos) != 1 || topos[0].Segments["topo/node"] != "node-a" || len(topos[0].Segments) != 1 {
			t.Errorf("accessibility %v, want exactly topo/node=node-a", topos)
		}
	}
}

// A volumeMode: Block claim asks the driver for the block access type, in
// every capability; a class with mountOptions cannot serve it, since a raw
// device is not mounted.
func TestCreateVolumeRequestBlock(t *testing.T) {
	p := &Provisioner{nodeName: "node-a", topologyKey: "topo/node"}
	claim := testClaim("raw", "node-a", "1Gi", v1.ReadWriteOnce, v1.ReadWriteOncePod)
	block := v1.PersistentVolumeBlock
	claim.Spec.VolumeMode = &block
	req, err := p.createVolumeRequest(controller.ProvisionOptions{PVName: "pvc-1", PVC: claim})
	if err != nil {
		t.Fatal(err)
	}
	if len(req.GetVolumeCapabilities()) != 2 {
		t.Fatalf("capabilities %v, want one per access mode", req.GetVolumeCapabilities())
	}
	for _, c := range req.GetVolumeCapabilities() {
		if c.GetBlock() == nil {
			t.Errorf("capability %v, want the block access type", c)
		}
	}
	class := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "tuned"}, MountOptions: []string{"noatime"}}
	_, err = p.createVolumeRequest(controller.ProvisionOptions{PVName: "pvc-1", PVC: claim, StorageClass: class})
	if err == nil || !strings.Contains(err.Error(), `StorageClass "tuned" has mountOptions`) {
		t.Fatalf("error %v, want the refusal of mountOptions for a block claim", err)
	}
}

// TestCreateVolumeRequestRefuses covers claims no node can serve: each is
// refused before the driver is called, with a message that names what the
// claim asked for.
func TestCreateVolumeRequestRefuses(t *testing.T) {
	p := &Provisioner{nodeName: "node-a", topologyKey: "topo/node"}
	snapshotGroup, other := "snapshot.storage.k8s.io", "other"
	for _, tc := range []struct {
		name  string
		edit  func(*v1.PersistentVolumeClaim)
		wants []string
	}{
		{"2^64 bytes, which Value() wraps to 0", func(c *v1.PersistentVolumeClaim) {
			c.Spec.Resources.Requests[v1.ResourceStorage] = resource.MustParse("18446744073709551616")
		}, []string{"storage request 18446744073709551616", "at most 8Ei"}},
		{"a limit past int64", func(c *v1.PersistentVolumeClaim) {
			c.Spec.Resources.Limits = v1.ResourceList{v1.ResourceStorage: resource.MustParse("9223372036854775808")}
		}, []string{"storage limit 9223372036854775808"}},
		{"a clone from another namespace", func(c *v1.PersistentVolumeClaim) {
			other := "other"
			c.Spec.DataSourceRef = &v1.TypedObjectReference{Kind: "PersistentVolumeClaim", Name: "data-web-0", Namespace: &other}
		}, []string{"would start empty", `PersistentVolumeClaim "data-web-0"`}},
		{"a restore of another namespace's snapshot", func(c *v1.PersistentVolumeClaim) {
			c.Spec.DataSourceRef = &v1.TypedObjectReference{APIGroup: &snapshotGroup, Kind: "VolumeSnapshot", Name: "nightly", Namespace: &other}
		}, []string{`VolumeSnapshot "nightly"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			claim := testClaim("data", "node-a", "1Gi", v1.ReadWriteOnce)
			tc.edit(claim)
			_, err := p.createVolumeRequest(controller.ProvisionOptions{PVName: "pvc-1", PVC: claim})
			for _, want := range tc.wants {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("error %v, want one containing %q", err, want)
				}
			}
		})
	}
	// The largest size that fits is served, not refused.
	claim := testClaim("data", "node-a", "1Gi", v1.ReadWriteOnce)
	claim.Spec.Resources.Requests[v1.ResourceStorage] = *resource.NewQuantity(math.MaxInt64, resource.BinarySI)
	req, err := p.createVolumeRequest(controller.ProvisionOptions{PVName: "pvc-1", PVC: claim})
	if err != nil || req.CapacityRange.RequiredBytes != math.MaxInt64 {
		t.Errorf("2^63-1 bytes: %v, %v", req.GetCapacityRange(), err)
	}
}

// TestShouldProvisionLeavesPopulatorsAlone: a claim whose dataSourceRef names
// a volume populator's object is the populator's to fill; claims and
// snapshots as sources are stickyvol's to refuse.
func TestShouldProvisionLeavesPopulatorsAlone(t *testing.T) {
	p := &Provisioner{nodeName: "node-a", refused: newRefusals()}
	group := func(g string) *string { return &g }
	for _, tc := range []struct {
		ref  *v1.TypedObjectReference
		want bool
	}{
		{nil, true},
		{&v1.TypedObjectReference{Kind: "PersistentVolumeClaim", Name: "src"}, true},
		{&v1.TypedObjectReference{APIGroup: group("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: "s"}, true},
		{&v1.TypedObjectReference{APIGroup: group("hello.example.com"), Kind: "Hello", Name: "h"}, false},
		{&v1.TypedObjectReference{Kind: "ConfigMap", Name: "c"}, false},
	} {
		claim := testClaim("data", "node-a", "1Gi", v1.ReadWriteOnce)
		claim.Spec.DataSourceRef = tc.ref
		if got := p.ShouldProvision(t.Context(), claim); got != tc.want {
			t.Errorf("dataSourceRef %+v: ShouldProvision %v, want %v", tc.ref, got, tc.want)
		}
	}
}

// testClaim returns a claim in namespace default of class stickyvol.
func testClaim(name, node, size string, modes ...v1.PersistentVolumeAccessMode) *v1.PersistentVolumeClaim {
	class := "stickyvol"
	claim := &v1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: "uid-" + "1234"},
		Spec: v1.PersistentVolumeClaimSpec{
			AccessModes:      modes,
			StorageClassName: &class,
			Resources: v1.VolumeResourceRequirements{
				Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse(size)},
			},
		},
	}
	if node != "" {
		claim.Annotations = map[string]string{AnnSelectedNode: node}
	}
	return claim
}
