package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/stickyvol/stickyvol/driver"
)

func statusClaim(ns, name, class, volume, node string) *v1.PersistentVolumeClaim {
	c := &v1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "/" + name)},
		Spec: v1.PersistentVolumeClaimSpec{StorageClassName: &class, VolumeName: volume,
			Resources: v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse("1Gi")}}},
		Status: v1.PersistentVolumeClaimStatus{Phase: v1.ClaimPending},
	}
	if volume != "" {
		c.Status.Phase = v1.ClaimBound
	}
	if node != "" {
		c.Annotations = map[string]string{"volume.kubernetes.io/selected-node": node}
	}
	return c
}

func statusPV(name, drv, node string) *v1.PersistentVolume {
	return &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1.PersistentVolumeSpec{
			Capacity:               v1.ResourceList{v1.ResourceStorage: resource.MustParse("2Gi")},
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: name}},
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
				MatchExpressions: []v1.NodeSelectorRequirement{{Key: driver.TopologyKey, Operator: v1.NodeSelectorOpIn, Values: []string{node}}}}}}},
		},
	}
}

func TestStatus(t *testing.T) {
	kube := fake.NewClientset(
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "stickyvol"}, Provisioner: driver.Name},
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "standard"}, Provisioner: "other.example.com"},
		statusPV("pvc-1", driver.Name, "node-a"),
		statusPV("pvc-2", driver.Name, "node-b"),
		statusPV("pvc-other", "other.example.com", "node-a"),
		statusClaim("web", "data-web-0", "stickyvol", "pvc-1", "node-a"),
		statusClaim("web", "data-web-1", "stickyvol", "pvc-2", "node-b"),
		statusClaim("web", "data-web-10", "stickyvol", "", "node-a"),
		statusClaim("web", "data-web-2", "stickyvol", "", "node-a"),
		prebound(statusPV("pvc-3", driver.Name, "node-a"), "web", "data-web-3"),
		statusClaim("web", "data-web-3", "stickyvol", "", "node-a"),
		statusClaim("db", "other", "standard", "pvc-other", "node-a"),
	)
	usage := func(_ context.Context, node string) (map[claimKey]uint64, error) {
		if node == "node-b" {
			return nil, errors.New("forbidden: nodes/proxy")
		}
		return claimUsage(statsv1alpha1.Summary{Pods: []statsv1alpha1.PodStats{{VolumeStats: []statsv1alpha1.VolumeStats{
			{Name: "data", PVCRef: &statsv1alpha1.PVCReference{Namespace: "web", Name: "data-web-0"},
				FsStats: statsv1alpha1.FsStats{UsedBytes: ptr(uint64(300 << 20))}},
		}}}}), nil
	}
	rows, warnings, err := statusRows(t.Context(), kube, &statusOptions{dataRoot: "/var/lib/stickyvol"}, usage)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := printStatus(&out, rows); err != nil {
		t.Fatal(err)
	}
	want := `NAMESPACE  CLAIM        STATUS   PV     NODE    PATH                              CAPACITY         USED
web        data-web-0   Bound    pvc-1  node-a  /var/lib/stickyvol/volumes/pvc-1  2Gi              300Mi
web        data-web-1   Bound    pvc-2  node-b  /var/lib/stickyvol/volumes/pvc-2  2Gi              -
web        data-web-2   Pending  -      node-a  -                                 1Gi (requested)  -
web        data-web-3   Pending  pvc-3  node-a  /var/lib/stickyvol/volumes/pvc-3  2Gi              -
web        data-web-10  Pending  -      node-a  -                                 1Gi (requested)  -
`
	if out.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", out.String(), want)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "node-b") {
		t.Errorf("warnings %v, want one about node-b", warnings)
	}
}

func ptr[T any](v T) *T { return &v }

// prebound makes pv name the claim, as a PV the provisioner made but the PV
// controller has not bound yet.
func prebound(pv *v1.PersistentVolume, ns, name string) *v1.PersistentVolume {
	pv.Spec.ClaimRef = &v1.ObjectReference{Namespace: ns, Name: name, UID: types.UID(ns + "/" + name)}
	return pv
}
