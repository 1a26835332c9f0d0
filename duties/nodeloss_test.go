package duties_test

import (
	"context"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/duties"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/provisioner"
)

// bound returns a claim and the PV on node it is Bound to, of class.
func bound(name, node, class string) (*v1.PersistentVolumeClaim, *v1.PersistentVolume) {
	claim := fixtures.Claim(name, node, "1Gi", v1.ReadWriteOnce)
	claim.Spec.StorageClassName = &class
	pv := fixtures.PVOn("pvc-"+string(claim.UID), node)
	claim.Spec.VolumeName = pv.Name
	claim.Status.Phase = v1.ClaimBound
	pv.Spec.StorageClassName = class
	pv.Spec.ClaimRef = &v1.ObjectReference{Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID}
	pv.Finalizers = []string{"external-provisioner.volume.kubernetes.io/finalizer"}
	pv.Status.Phase = v1.VolumeBound
	return claim, pv
}

// pendingPod is a StatefulSet's pod that uses claim and cannot be scheduled.
func pendingPod(name string, claim *v1.PersistentVolumeClaim) *v1.Pod {
	yes := true
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: claim.Namespace, UID: types.UID("uid-" + name),
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "web", UID: "uid-web", Controller: &yes}}},
		Spec: v1.PodSpec{Volumes: []v1.Volume{{Name: "data", VolumeSource: v1.VolumeSource{
			PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: claim.Name}}}}},
		Status: v1.PodStatus{Phase: v1.PodPending},
	}
}

func startNodeLoss(t *testing.T, client *fake.Clientset) {
	t.Helper()
	factory := informers.NewSharedInformerFactory(client, 0)
	capacities := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace("stickyvol"))
	n, err := duties.NewNodeLoss(duties.NodeLossConfig{DriverName: driver.Name, TopologyKey: driver.TopologyKey,
		Client: client, Informers: factory, CapacityInformers: capacities})
	if err != nil {
		t.Fatal(err)
	}
	runDuty(t, n.Run, factory, capacities)
}

// capacityOf is the CSIStorageCapacity object node's agent publishes.
func capacityOf(node string) *storagev1.CSIStorageCapacity {
	return &storagev1.CSIStorageCapacity{
		ObjectMeta:       metav1.ObjectMeta{Name: "csisc-" + node, Namespace: "stickyvol", UID: types.UID("uid-csisc-" + node)},
		NodeTopology:     &metav1.LabelSelector{MatchLabels: map[string]string{driver.TopologyKey: node}},
		StorageClassName: "stickyvol",
	}
}

func hasEvent(ctx context.Context, client *fake.Clientset, kind, name, reason string) bool {
	events, err := client.CoreV1().Events("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return false
	}
	return slices.ContainsFunc(events.Items, func(e v1.Event) bool {
		return e.InvolvedObject.Kind == kind && e.InvolvedObject.Name == name && e.Reason == reason
	})
}

// TestNodeLoss: node-b is gone (no Node object), node-c is only NotReady.
// What node-b left is cleaned up as each policy says; nothing of node-a or
// node-c is touched.
func TestNodeLoss(t *testing.T) {
	recreate := fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer)
	recreate.Name = "stickyvol-recreate"
	recreate.Parameters = map[string]string{provisioner.ParamNodeLossPolicy: provisioner.NodeLossRecreate}

	notReady := fixtures.ReadyNode("node-c")
	notReady.Status.Conditions[0].Status = v1.ConditionFalse
	pending := fixtures.Claim("pending", "node-b", "1Gi", v1.ReadWriteOnce)
	released := fixtures.PVOn("pvc-released", "node-b")
	released.Finalizers = []string{"external-provisioner.volume.kubernetes.io/finalizer"}
	released.Spec.ClaimRef = &v1.ObjectReference{Namespace: "default", Name: "deleted-claim", UID: "uid-deleted"}
	released.Status.Phase = v1.VolumeReleased
	kept, keptPV := bound("data-kept-0", "node-b", "stickyvol")
	keptPod := pendingPod("kept-0", kept)
	gone, gonePV := bound("data-web-0", "node-b", "stickyvol-recreate")
	gonePod := pendingPod("web-0", gone)
	live, livePV := bound("data-live-0", "node-a", "stickyvol-recreate")
	sick, sickPV := bound("data-sick-0", "node-c", "stickyvol-recreate")
	sickReleased := fixtures.PVOn("pvc-sick-released", "node-c")
	sickReleased.Status.Phase = v1.VolumeReleased

	client := fake.NewClientset([]runtime.Object{
		fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer), recreate,
		fixtures.ReadyNode("node-a"), notReady,
		pending, released, kept, keptPV, keptPod, gone, gonePV, gonePod,
		live, livePV, sick, sickPV, sickReleased,
		capacityOf("node-a"), capacityOf("node-b"), capacityOf("node-c"),
	}...)
	startNodeLoss(t, client)
	capacities := client.StorageV1().CSIStorageCapacities("stickyvol")

	fixtures.Eventually(t, "the pending claim to lose its selected node", func(ctx context.Context) (bool, error) {
		c, err := client.CoreV1().PersistentVolumeClaims("default").Get(ctx, "pending", metav1.GetOptions{})
		return err == nil && c.Annotations[provisioner.AnnSelectedNode] == "", err
	})
	fixtures.Eventually(t, "node-b's published capacity to go", func(ctx context.Context) (bool, error) {
		_, err := capacities.Get(ctx, "csisc-node-b", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	fixtures.Eventually(t, "the released PV of node-b to go", func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().PersistentVolumes().Get(ctx, released.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	fixtures.Eventually(t, "Recreate: claim and Pending pod deleted", func(ctx context.Context) (bool, error) {
		_, claimErr := client.CoreV1().PersistentVolumeClaims("default").Get(ctx, gone.Name, metav1.GetOptions{})
		_, podErr := client.CoreV1().Pods("default").Get(ctx, gonePod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(claimErr) && apierrors.IsNotFound(podErr), nil
	})
	fixtures.Eventually(t, "the events that say why", func(ctx context.Context) (bool, error) {
		return hasEvent(ctx, client, "PersistentVolumeClaim", "pending", "NodeGone") &&
			hasEvent(ctx, client, "PersistentVolume", released.Name, "NodeGone") &&
			hasEvent(ctx, client, "PersistentVolumeClaim", kept.Name, "NodeGone") &&
			hasEvent(ctx, client, "Pod", keptPod.Name, "NodeGone") &&
			hasEvent(ctx, client, "PersistentVolumeClaim", gone.Name, "NodeGone") &&
			hasEvent(ctx, client, "StatefulSet", "web", "NodeGone"), nil
	})
	// The old PV of the recreated claim, now held by no claim, goes too.
	fixtures.Eventually(t, "the recreated claim's old PV to go", func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().PersistentVolumes().Get(ctx, gonePV.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})

	// Keep deletes nothing; a NotReady node and a live one are not touched.
	for _, name := range []string{kept.Name, live.Name, sick.Name} {
		if _, err := client.CoreV1().PersistentVolumeClaims("default").Get(t.Context(), name, metav1.GetOptions{}); err != nil {
			t.Errorf("claim %s: %v", name, err)
		}
	}
	for _, name := range []string{keptPV.Name, livePV.Name, sickPV.Name, sickReleased.Name} {
		if _, err := client.CoreV1().PersistentVolumes().Get(t.Context(), name, metav1.GetOptions{}); err != nil {
			t.Errorf("PV %s: %v", name, err)
		}
	}
	if _, err := client.CoreV1().Pods("default").Get(t.Context(), keptPod.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("pod of the kept claim: %v", err)
	}
	for _, node := range []string{"node-a", "node-c"} {
		if _, err := capacities.Get(t.Context(), "csisc-"+node, metav1.GetOptions{}); err != nil {
			t.Errorf("published capacity of %s, which is not gone: %v", node, err)
		}
	}

	// When node-c's Node object is deleted, its volumes are handled too.
	if err := client.CoreV1().Nodes().Delete(t.Context(), "node-c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	fixtures.Eventually(t, "node-c's released PV and published capacity to go once node-c is deleted", func(ctx context.Context) (bool, error) {
		_, pvErr := client.CoreV1().PersistentVolumes().Get(ctx, sickReleased.Name, metav1.GetOptions{})
		_, capacityErr := capacities.Get(ctx, "csisc-node-c", metav1.GetOptions{})
		return apierrors.IsNotFound(pvErr) && apierrors.IsNotFound(capacityErr), nil
	})
}
