package cachetrim_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/stickyvol/stickyvol/internal/cachetrim"
)

// entry is one managedFields entry as the API server records it.
func entry(manager, subresource, fields string) metav1.ManagedFieldsEntry {
	return metav1.ManagedFieldsEntry{
		Manager: manager, Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1",
		Time: &metav1.Time{Time: time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)}, FieldsType: "FieldsV1",
		FieldsV1: metav1.NewFieldsV1(fields), Subresource: subresource,
	}
}

// boundClaim is a StatefulSet's claim as an agent's informer receives it
// once stickyvol has provisioned it and the PV controller has bound it:
// written by the StatefulSet controller, the scheduler, the agent, the PV
// controller (metadata and spec, then status).
func boundClaim(i int) *v1.PersistentVolumeClaim {
	class := "stickyvol"
	fs := v1.PersistentVolumeFilesystem
	name := fmt.Sprintf("data-web-%d", i)
	uid := types.UID(fmt.Sprintf("6f1c2a4e-0b7d-4c8e-9a51-%012d", i))
	return &v1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "default", UID: uid, ResourceVersion: fmt.Sprint(100000 + i),
			CreationTimestamp: metav1.Time{Time: time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)},
			Labels:            map[string]string{"app": "web"},
			Finalizers:        []string{"kubernetes.io/pvc-protection"},
			Annotations: map[string]string{
				"pv.kubernetes.io/bind-completed":               "yes",
				"pv.kubernetes.io/bound-by-controller":          "yes",
				"volume.beta.kubernetes.io/storage-provisioner": "hostpath.stickyvol.dev",
				"volume.kubernetes.io/storage-provisioner":      "hostpath.stickyvol.dev",
				"volume.kubernetes.io/selected-node":            fmt.Sprintf("node-%d", i%100),
			},
			ManagedFields: []metav1.ManagedFieldsEntry{
				entry("kube-controller-manager", "", `{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:accessModes":{},"f:resources":{"f:requests":{".":{},"f:storage":{}}},"f:storageClassName":{},"f:volumeMode":{}}}`),
				entry("kube-scheduler", "", `{"f:metadata":{"f:annotations":{".":{},"f:volume.kubernetes.io/selected-node":{}}}}`),
				entry("stickyvol", "", `{"f:metadata":{"f:annotations":{"f:volume.beta.kubernetes.io/storage-provisioner":{},"f:volume.kubernetes.io/storage-provisioner":{}}}}`),
				entry("kube-controller-manager", "", `{"f:metadata":{"f:annotations":{"f:pv.kubernetes.io/bind-completed":{},"f:pv.kubernetes.io/bound-by-controller":{}}},"f:spec":{"f:volumeName":{}}}`),
				entry("kube-controller-manager", "status", `{"f:status":{"f:accessModes":{},"f:capacity":{".":{},"f:storage":{}},"f:phase":{}}}`),
			},
		},
		Spec: v1.PersistentVolumeClaimSpec{
			AccessModes:      []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
			Resources:        v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse("1Gi")}},
			StorageClassName: &class,
			VolumeMode:       &fs,
			VolumeName:       "pvc-" + string(uid),
		},
		Status: v1.PersistentVolumeClaimStatus{
			Phase:       v1.ClaimBound,
			AccessModes: []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
			Capacity:    v1.ResourceList{v1.ResourceStorage: resource.MustParse("1Gi")},
		},
	}
}

// boundPV is the PV stickyvol made for boundClaim(i), once bound: written by
// the agent, then by the PV controller (claimRef's UID, then status).
func boundPV(i int) *v1.PersistentVolume {
	claim := boundClaim(i)
	fs := v1.PersistentVolumeFilesystem
	node := claim.Annotations["volume.kubernetes.io/selected-node"]
	return &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name: claim.Spec.VolumeName, UID: types.UID(fmt.Sprintf("0c9e5b7a-3f21-4d6b-8e40-%012d", i)),
			ResourceVersion: fmt.Sprint(200000 + i), CreationTimestamp: claim.CreationTimestamp,
			Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": "hostpath.stickyvol.dev"},
			Finalizers:  []string{"kubernetes.io/pv-protection", "external-provisioner.volume.kubernetes.io/finalizer"},
			ManagedFields: []metav1.ManagedFieldsEntry{
				entry("stickyvol", "", `{"f:metadata":{"f:annotations":{".":{},"f:pv.kubernetes.io/provisioned-by":{}},"f:finalizers":{".":{},"v:\"external-provisioner.volume.kubernetes.io/finalizer\"":{}}},"f:spec":{"f:accessModes":{},"f:capacity":{".":{},"f:storage":{}},"f:claimRef":{".":{},"f:apiVersion":{},"f:kind":{},"f:name":{},"f:namespace":{},"f:resourceVersion":{},"f:uid":{}},"f:csi":{".":{},"f:driver":{},"f:volumeAttributes":{".":{},"f:path":{},"f:pool":{},"f:storage.kubernetes.io/csiProvisionerIdentity":{}},"f:volumeHandle":{}},"f:nodeAffinity":{".":{},"f:required":{}},"f:persistentVolumeReclaimPolicy":{},"f:storageClassName":{},"f:volumeMode":{}}}`),
				entry("kube-controller-manager", "status", `{"f:status":{"f:phase":{}}}`),
			},
		},
		Spec: v1.PersistentVolumeSpec{
			AccessModes:                   []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
			Capacity:                      v1.ResourceList{v1.ResourceStorage: resource.MustParse("1Gi")},
			PersistentVolumeReclaimPolicy: v1.PersistentVolumeReclaimDelete,
			StorageClassName:              "stickyvol",
			VolumeMode:                    &fs,
			ClaimRef: &v1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: claim.Namespace,
				Name: claim.Name, UID: claim.UID, ResourceVersion: "99999"},
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{
				Driver: "hostpath.stickyvol.dev", VolumeHandle: claim.Spec.VolumeName,
				VolumeAttributes: map[string]string{"path": "/var/lib/stickyvol/volumes/" + claim.Spec.VolumeName, "pool": "default"},
			}},
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
				MatchExpressions: []v1.NodeSelectorRequirement{{Key: "topology.hostpath.stickyvol.dev/node",
					Operator: v1.NodeSelectorOpIn, Values: []string{node}}}}}}},
		},
		Status: v1.PersistentVolumeStatus{Phase: v1.VolumeBound},
	}
}

// Claims and PVs keep every field but their managedFields: the agent
// updates cached claims, so nothing else may go.
func TestManagedFieldsKeepsEverythingElse(t *testing.T) {
	claim, pv := boundClaim(7), boundPV(7)
	for _, tc := range []struct {
		obj, want metav1.Object
	}{{claim.DeepCopy(), claim}, {pv.DeepCopy(), pv}} {
		got, err := cachetrim.ManagedFields(tc.obj)
		if err != nil {
			t.Fatal(err)
		}
		tc.want.SetManagedFields(nil)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.want.GetName(), diff)
		}
	}
	tombstone := cache.DeletedFinalStateUnknown{Key: "default/x", Obj: claim}
	if got, err := cachetrim.ManagedFields(tombstone); err != nil || got != any(tombstone) {
		t.Errorf("a tombstone: %v, %v; want it unchanged", got, err)
	}
}

func TestNodeKeepsMetadata(t *testing.T) {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", UID: "uid-a", ResourceVersion: "5", Labels: map[string]string{"a": "b"},
			ManagedFields: []metav1.ManagedFieldsEntry{entry("kubelet", "status", `{"f:status":{}}`)}},
		Spec:   v1.NodeSpec{PodCIDR: "10.0.0.0/24"},
		Status: v1.NodeStatus{Images: []v1.ContainerImage{{Names: []string{"registry.k8s.io/pause:3.10"}, SizeBytes: 1}}},
	}
	got, err := cachetrim.Node(node.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	want := &v1.Node{ObjectMeta: node.ObjectMeta}
	want.ManagedFields = nil
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// protoObject is what the informers cache, with the protobuf codec the
// agent's client uses.
type protoObject interface {
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
}

// heapOf returns the bytes of heap that a cache of n objects holds, each
// decoded from its wire form as the informer's reflector decodes it (every
// string and byte slice of its own), then given to transform.
func heapOf(b *testing.B, n int, build func(int) protoObject, fresh func() protoObject, transform cache.TransformFunc) uint64 {
	b.Helper()
	store := cache.NewStore(cache.MetaNamespaceKeyFunc)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		data, err := build(i).Marshal()
		if err != nil {
			b.Fatal(err)
		}
		obj := fresh()
		if err := obj.Unmarshal(data); err != nil {
			b.Fatal(err)
		}
		cached, err := transform(obj)
		if err != nil {
			b.Fatal(err)
		}
		if err := store.Add(cached); err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(store)
	return after.HeapAlloc - before.HeapAlloc
}

// BenchmarkCacheMemory reports the heap a cache of 10,000 bound claims, or
// of their 10,000 PVs, holds, as served and with the transform the agent
// uses:
//
//	go test ./internal/cachetrim -run - -bench CacheMemory -benchtime 3x
func BenchmarkCacheMemory(b *testing.B) {
	const n = 10000
	asServed := func(obj any) (any, error) { return obj, nil }
	for _, kind := range []struct {
		name  string
		build func(int) protoObject
		fresh func() protoObject
	}{
		{"claims", func(i int) protoObject { return boundClaim(i) }, func() protoObject { return &v1.PersistentVolumeClaim{} }},
		{"pvs", func(i int) protoObject { return boundPV(i) }, func() protoObject { return &v1.PersistentVolume{} }},
	} {
		for _, tr := range []struct {
			name      string
			transform cache.TransformFunc
		}{{"as-served", asServed}, {"managedFields-dropped", cachetrim.ManagedFields}} {
			b.Run(kind.name+"/"+tr.name, func(b *testing.B) {
				var heap uint64
				for b.Loop() {
					heap = heapOf(b, n, kind.build, kind.fresh, tr.transform)
				}
				b.ReportMetric(float64(heap)/(1<<20), "MiB/10k")
				b.ReportMetric(float64(heap)/n, "B/object")
			})
		}
	}
}
