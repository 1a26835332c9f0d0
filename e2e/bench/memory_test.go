package bench

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// TestCreateObjects checks the memory scenario's objects against a fake API:
// each claim Bound to its PV and each PV Bound to its claim, on a node that
// is none of the agents', of the driver but kept on release.
func TestCreateObjects(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	const n = 40
	if err := createObjects(ctx, cs, "bench-memory", n); err != nil {
		t.Fatal(err)
	}
	claims, err := cs.CoreV1().PersistentVolumeClaims("bench-memory").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pvs, err := cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{LabelSelector: memoryLabel + "=memory"})
	if err != nil {
		t.Fatal(err)
	}
	if len(claims.Items) != n || len(pvs.Items) != n {
		t.Fatalf("%d claims and %d PVs, want %d each", len(claims.Items), len(pvs.Items), n)
	}
	byName := map[string]v1.PersistentVolume{}
	for _, pv := range pvs.Items {
		byName[pv.Name] = pv
	}
	for _, c := range claims.Items {
		pv, ok := byName[c.Spec.VolumeName]
		if !ok {
			t.Errorf("claim %s names PV %q, which does not exist", c.Name, c.Spec.VolumeName)
			continue
		}
		if c.Status.Phase != v1.ClaimBound || c.Annotations["pv.kubernetes.io/bind-completed"] != "yes" {
			t.Errorf("claim %s: phase %s, annotations %v: want Bound and bind-completed", c.Name, c.Status.Phase, c.Annotations)
		}
		if ref := pv.Spec.ClaimRef; pv.Status.Phase != v1.VolumeBound || ref == nil || ref.Name != c.Name || ref.Namespace != c.Namespace {
			t.Errorf("PV %s: phase %s, claimRef %+v: want Bound to %s", pv.Name, pv.Status.Phase, ref, c.Name)
		}
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != framework.DriverName || pv.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimRetain {
			t.Errorf("PV %s: source %+v, reclaim %s: want stickyvol's, Retain", pv.Name, pv.Spec.CSI, pv.Spec.PersistentVolumeReclaimPolicy)
		}
		if node := framework.PVNode(&pv); node == "" || node == "kwok-node-1" {
			t.Errorf("PV %s is on node %q, want one with no agent", pv.Name, node)
		}
	}
}
