//go:build e2e

package story

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// classNamed sets the StorageClass of the StatefulSet's claims.
func classNamed(class string) func(*appsv1.StatefulSet) {
	return func(sts *appsv1.StatefulSet) { sts.Spec.VolumeClaimTemplates[0].Spec.StorageClassName = &class }
}

// TestNodeLoss powers a node off and deletes its Node object while it holds
// two StatefulSets' volumes. nodeLossPolicy Keep (class stickyvol) deletes
// nothing and says so on the claim; Recreate (a class of this test) deletes
// the claim and its Pending pod, and the StatefulSet's pod runs again on the
// other node with a new, empty volume while the old PV goes. A VolumeSnapshot
// of the kept claim, deleted while the node is gone, goes with its content
// (the controller lets it go, since no agent is left to). When the node
// comes back with its disk, the kept pod runs there again with its data.
func TestNodeLoss(t *testing.T) {
	ctx, e := start(t, 8*time.Minute)
	lost := e.Cluster.Nodes()[len(e.Cluster.Nodes())-1].Name
	other := e.otherNode(lost)

	recreate := &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: "stickyvol-recreate"},
		Provisioner:       framework.DriverName,
		ReclaimPolicy:     ptr.To(v1.PersistentVolumeReclaimDelete),
		VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer),
		Parameters:        map[string]string{"nodeLossPolicy": "Recreate"},
	}
	if _, err := e.Client.StorageV1().StorageClasses().Create(ctx, recreate, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.Client.StorageV1().StorageClasses().Delete(context.WithoutCancel(ctx), recreate.Name, metav1.DeleteOptions{})
	})
	for _, n := range e.Cluster.Nodes() {
		e.waitPublished(ctx, recreate.Name, n.Name, -1)
	}
	kept := e.bindingOf(ctx, e.createStatefulSet(ctx, statefulSet("kept", 1, preferring(lost)))[0])
	gone := e.bindingOf(ctx, e.createStatefulSet(ctx, statefulSet("gone", 1, preferring(lost), classNamed(recreate.Name)))[0])
	if kept.node != lost || gone.node != lost {
		t.Fatalf("pods on %s and %s, want both on %s", kept.node, gone.node, lost)
	}
	sum := e.writeBlob(ctx, kept.pod)
	snaps, err := e.Snapshots()
	if err != nil {
		t.Fatal(err)
	}
	snapshot := e.snapshotOf(ctx, snaps, "kept-before", kept.claim)

	// What the lost node's disk holds: the volumes whose PVs the node-loss
	// duty may delete while the node is gone (this scenario's Recreate one,
	// and any Released volume of an earlier scenario still on its way out).
	onDisk, err := os.ReadDir(filepath.Join(e.node(lost).DataDir, "volumes"))
	if err != nil {
		t.Fatal(err)
	}
	var wentWithTheNode []string
	for _, d := range onDisk {
		wentWithTheNode = append(wentWithTheNode, d.Name())
	}

	e.step("%s powers off and its Node object is deleted", lost)
	if err := e.Cluster.StopNode(lost); err != nil {
		t.Fatal(err)
	}
	restarted := false
	restart := func() {
		if restarted {
			return
		}
		restarted = true
		if err := e.Cluster.StartNode(context.WithoutCancel(ctx), lost); err != nil {
			t.Errorf("starting %s again: %v", lost, err)
			return
		}
		if err := e.WaitForDriverRegistered(context.WithoutCancel(ctx)); err != nil {
			t.Errorf("after %s came back: %v", lost, err)
		}
	}
	t.Cleanup(restart) // the next scenarios need both nodes
	if err := e.Client.CoreV1().Nodes().Delete(ctx, lost, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	e.step("Recreate: a new claim and pod %s on %s, the old PV gone", gone.pod, other)
	// The pods of the deleted node still look Ready until the pod garbage
	// collector deletes them (it waits 40 s for a node to come back).
	for _, b := range []binding{gone, kept} {
		if err := e.WaitForPodGone(ctx, e.ns, b.pod, string(b.podUID)); err != nil {
			t.Fatalf("pod %s of the deleted node: %v", b.pod, err)
		}
	}
	fresh := e.podReady(ctx, gone.pod)
	now := e.bindingOf(ctx, fresh)
	if now.node != other || now.pv == gone.pv {
		t.Errorf("after the loss: %s, want a new PV on %s", now, other)
	}
	e.waitVolume(ctx, gone.pv, func(pv *v1.PersistentVolume) bool { return pv == nil }, "deleted")
	if _, err := e.WaitForEvent(ctx, e.ns, "StatefulSet", "gone", func(ev *v1.Event) bool {
		return ev.Reason == "NodeGone" && strings.Contains(ev.Message, "nodeLossPolicy Recreate")
	}); err != nil {
		t.Errorf("no NodeGone event on the StatefulSet: %v", err)
	}

	e.step("Keep: claim %s and PV %s stay, with a NodeGone event", kept.claim, kept.pv)
	if _, err := e.WaitForEvent(ctx, e.ns, "PersistentVolumeClaim", kept.claim, func(ev *v1.Event) bool {
		return ev.Reason == "NodeGone" && ev.Type == v1.EventTypeWarning && strings.Contains(ev.Message, lost)
	}); err != nil {
		t.Errorf("no NodeGone event on the kept claim: %v", err)
	}
	c, err := e.Client.CoreV1().PersistentVolumeClaims(e.ns).Get(ctx, kept.claim, metav1.GetOptions{})
	if err != nil || c.Spec.VolumeName != kept.pv || c.Status.Phase != v1.ClaimBound {
		t.Errorf("kept claim: %v %v", c, err)
	}
	if _, err := e.Client.CoreV1().PersistentVolumes().Get(ctx, kept.pv, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		t.Errorf("the kept PV %s was deleted", kept.pv)
	}

	e.step("VolumeSnapshot %s of %s, deleted while %s is gone, goes with its content", snapshot.Spec.VolumeSnapshotRef.Name, kept.claim, lost)
	e.deleteSnapshot(ctx, snaps, snapshot, func() bool { return true })
	eventCtx, cancel := context.WithTimeout(ctx, 30*time.Second) // the content is gone already, or will not go
	defer cancel()
	if _, err := e.WaitForEvent(eventCtx, metav1.NamespaceDefault, "VolumeSnapshotContent", snapshot.Name, func(ev *v1.Event) bool {
		return ev.Reason == "NodeGone" && strings.Contains(ev.Message, lost)
	}); err != nil {
		t.Errorf("no NodeGone event on content %s: %v", snapshot.Name, err)
	}

	e.step("%s comes back with its disk: %s runs there again with its data", lost, kept.pod)
	restart()
	back := e.bindingOf(ctx, e.podReady(ctx, kept.pod))
	if back.node != lost || back.pv != kept.pv {
		t.Errorf("after %s came back: %s, want PV %s on %s", lost, back, kept.pv, lost)
	}
	e.checkBlob(ctx, kept.pod, sum, "after its node was deleted and came back")

	// The disk came back with the volumes whose PVs went while it was away
	// (Recreate's, and Released ones deleted as lost): its agent counts
	// them as orphans once their grace has passed (stickyvol_orphan_volumes)
	// and deletes them only with --delete-orphans-after. Anything else
	// found is a fault.
	if !slices.Contains(wentWithTheNode, gone.handle) {
		t.Errorf("volume %s was not on %s's disk before the loss", gone.handle, lost)
	}
	report := e.audit(ctx, e.realRoots(), "after the node came back", wentWithTheNode...)
	e.record(chaosRow{claims: 2, faults: 1, orphans: len(report.Orphans), duplicates: len(report.Duplicates)})
}
