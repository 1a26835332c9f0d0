package provisioner

import (
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

func TestPersistentVolume(t *testing.T) {
	p := &Provisioner{nodeName: "node-a", driverName: "hostpath.stickyvol.dev", topologyKey: "topo/node"}
	retain := v1.PersistentVolumeReclaimRetain
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "fast"}, ReclaimPolicy: &retain,
		MountOptions: []string{"noatime"}}
	claim := testClaim("data-web-0", "node-a", "1Gi", v1.ReadWriteOncePod)
	opts := controller.ProvisionOptions{StorageClass: sc, PVName: "pvc-1", PVC: claim, SelectedNodeName: "node-a"}
	req := &csi.CreateVolumeRequest{CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}}

	for _, tc := range []struct {
		name     string
		vol      *csi.Volume
		wantSize int64
		wantErr  bool
	}{
		{"driver reports size and topology", &csi.Volume{VolumeId: "pvc-1", CapacityBytes: 2 << 30,
			VolumeContext:      map[string]string{"path": "/x"},
			AccessibleTopology: []*csi.Topology{{Segments: map[string]string{"topo/node": "node-a"}}}}, 2 << 30, false},
		{"no size, no topology: the request's size, this node", &csi.Volume{VolumeId: "pvc-1"}, 1 << 30, false},
		{"smaller than asked", &csi.Volume{VolumeId: "pvc-1", CapacityBytes: 1 << 20}, 0, true},
		{"no ID", &csi.Volume{CapacityBytes: 1 << 30}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pv, err := p.persistentVolume(opts, req, tc.vol)
			if tc.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if pv.Name != "pvc-1" || pv.Spec.StorageClassName != "fast" {
				t.Errorf("name %q class %q", pv.Name, pv.Spec.StorageClassName)
			}
			if got := pv.Spec.Capacity.Storage().Value(); got != tc.wantSize {
				t.Errorf("capacity %d, want %d", got, tc.wantSize)
			}
			if pv.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimRetain {
				t.Errorf("reclaim policy %s, want the class'", pv.Spec.PersistentVolumeReclaimPolicy)
			}
			if len(pv.Spec.AccessModes) != 1 || pv.Spec.AccessModes[0] != v1.ReadWriteOncePod {
				t.Errorf("access modes %v, want the claim's", pv.Spec.AccessModes)
			}
			if *pv.Spec.VolumeMode != v1.PersistentVolumeFilesystem || pv.Spec.MountOptions[0] != "noatime" {
				t.Errorf("volume mode %v, mount options %v", *pv.Spec.VolumeMode, pv.Spec.MountOptions)
			}
			src := pv.Spec.CSI
			if src.Driver != "hostpath.stickyvol.dev" || src.VolumeHandle != "pvc-1" || src.FSType != "" {
				t.Errorf("CSI source %+v", src)
			}
			if src.VolumeAttributes["path"] != tc.vol.VolumeContext["path"] {
				t.Errorf("attributes %v, want the volume context", src.VolumeAttributes)
			}
			if nodes := NodesOf(pv, "topo/node"); nodes.Len() != 1 || !nodes.Has("node-a") {
				t.Errorf("affinity names %v, want node-a", nodes.UnsortedList())
			}
		})
	}
}

func TestNodesOf(t *testing.T) {
	pv := func(exprs ...v1.NodeSelectorRequirement) *v1.PersistentVolume {
		return &v1.PersistentVolume{Spec: v1.PersistentVolumeSpec{NodeAffinity: &v1.VolumeNodeAffinity{
			Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{MatchExpressions: exprs}}}}}}
	}
	in := func(key string, values ...string) v1.NodeSelectorRequirement {
		return v1.NodeSelectorRequirement{Key: key, Operator: v1.NodeSelectorOpIn, Values: values}
	}
	for _, tc := range []struct {
		name string
		pv   *v1.PersistentVolume
		want []string
	}{
		{"topology key", pv(in("topo/node", "a")), []string{"a"}},
		{"hostname label", pv(in(v1.LabelHostname, "b")), []string{"b"}},
		{"other keys ignored", pv(in("zone", "z1")), nil},
		{"NotIn ignored", pv(v1.NodeSelectorRequirement{Key: "topo/node", Operator: v1.NodeSelectorOpNotIn, Values: []string{"a"}}), nil},
		{"no affinity", &v1.PersistentVolume{}, nil},
	} {
		got := NodesOf(tc.pv, "topo/node")
		if got.Len() != len(tc.want) || !got.HasAll(tc.want...) {
			t.Errorf("%s: %v, want %v", tc.name, got.UnsortedList(), tc.want)
		}
	}
}
