package bench

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/provisioner"
)

const (
	testClass  = "bench-instant"
	testDriver = "instant.bench.stickyvol.dev"
)

func testClaim(name, class string, uid types.UID) *v1.PersistentVolumeClaim {
	return &v1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name, UID: uid},
		Spec: v1.PersistentVolumeClaimSpec{
			AccessModes:      []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
			StorageClassName: ptr.To(class),
			Resources: v1.VolumeResourceRequirements{
				Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse("1Mi")},
			},
		},
	}
}

func TestInstantPV(t *testing.T) {
	claim := testClaim("data-web-0", testClass, "1234")
	claim.Annotations = map[string]string{provisioner.AnnSelectedNode: "kwok-node-3"}
	got := instantPV(claim, testDriver, v1.PersistentVolumeReclaimDelete)
	want := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pvc-1234", Annotations: map[string]string{annProvisionedBy: testDriver}},
		Spec: v1.PersistentVolumeSpec{
			Capacity:                      v1.ResourceList{v1.ResourceStorage: resource.MustParse("1Mi")},
			AccessModes:                   []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: v1.PersistentVolumeReclaimDelete,
			StorageClassName:              testClass,
			ClaimRef: &v1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: "bench", Name: "data-web-0", UID: "1234"},
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{
				Driver: testDriver, VolumeHandle: "pvc-1234"}},
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
				MatchExpressions: []v1.NodeSelectorRequirement{{
					Key: v1.LabelHostname, Operator: v1.NodeSelectorOpIn, Values: []string{"kwok-node-3"}}},
			}}}},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("instantPV (-want +got):\n%s", diff)
	}
}

// TestInstantProvisioner runs the instant provisioner against a fake API:
// a claim of its class gets its PV the moment the scheduler selects a node,
// a claim of another class never does, and a Released PV of its own is
// deleted.
func TestInstantProvisioner(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cs := fake.NewClientset(&storagev1.StorageClass{
		ObjectMeta:    metav1.ObjectMeta{Name: testClass},
		Provisioner:   testDriver,
		ReclaimPolicy: ptr.To(v1.PersistentVolumeReclaimDelete),
	})
	synced := make(chan struct{})
	stopped := make(chan error, 1)
	go func() {
		stopped <- RunInstant(ctx, InstantConfig{Client: cs, StorageClass: testClass, Driver: testDriver, Workers: 2,
			Synced: func() error { close(synced); return nil }})
	}()
	select {
	case <-synced:
	case err := <-stopped:
		t.Fatalf("RunInstant returned before it synced: %v", err)
	}

	claims := cs.CoreV1().PersistentVolumeClaims("bench")
	mine, other := testClaim("data-web-0", testClass, "uid-mine"), testClaim("data-db-0", "other", "uid-other")
	for _, c := range []*v1.PersistentVolumeClaim{mine, other} {
		if _, err := claims.Create(ctx, c, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Not selected yet: no PV, however long it waits.
	time.Sleep(100 * time.Millisecond)
	if pvs, _ := cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{}); len(pvs.Items) != 0 {
		t.Fatalf("%d PVs before any claim was selected to a node", len(pvs.Items))
	}

	for _, c := range []*v1.PersistentVolumeClaim{mine, other} {
		c.Annotations = map[string]string{provisioner.AnnSelectedNode: "kwok-node-2"}
		if _, err := claims.Update(ctx, c, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pv := waitForPV(ctx, t, cs, "pvc-uid-mine", func(pv *v1.PersistentVolume) bool { return pv != nil })
	if ref := pv.Spec.ClaimRef; ref == nil || ref.Name != "data-web-0" || ref.UID != "uid-mine" {
		t.Errorf("PV claimRef %+v, want pre-bound to bench/data-web-0 uid-mine", ref)
	}
	if got := pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values; len(got) != 1 || got[0] != "kwok-node-2" {
		t.Errorf("PV node affinity %v, want the selected node kwok-node-2", got)
	}
	if _, err := cs.CoreV1().PersistentVolumes().Get(ctx, "pvc-uid-other", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a claim of another class got a PV (err %v)", err)
	}

	// Released, as the PV controller marks it when its claim is deleted.
	pv.Status.Phase = v1.VolumeReleased
	if _, err := cs.CoreV1().PersistentVolumes().UpdateStatus(ctx, pv, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitForPV(ctx, t, cs, pv.Name, func(pv *v1.PersistentVolume) bool { return pv == nil })

	cancel()
	if err := <-stopped; err != nil {
		t.Errorf("RunInstant: %v", err)
	}
}

func waitForPV(ctx context.Context, t *testing.T, cs *fake.Clientset, name string, cond func(*v1.PersistentVolume) bool) *v1.PersistentVolume {
	t.Helper()
	var pv *v1.PersistentVolume
	err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := cs.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			got, err = nil, nil
		}
		pv = got
		return err == nil && cond(got), err
	})
	if err != nil {
		t.Fatalf("waiting for PV %s: %v", name, err)
	}
	return pv
}
