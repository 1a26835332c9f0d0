//go:build e2e

package story

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclientset "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/provisioner"
)

// TestSnapshot: a VolumeSnapshot (class stickyvol) of a StatefulSet pod's
// claim becomes ready, made by the agent of the pod's node; the pod writes
// more; a claim restoring the snapshot has the data of the moment of the
// snapshot, on that node, and a restore whose pod is pinned to the other
// node is refused there with a Warning naming the snapshot's node, and one
// whose pod only prefers the other node is moved to the snapshot's node by
// the controller, its pod following. Deleting
// the VolumeSnapshot (once no pending claim restores it) deletes the
// snapshot from the node's data root; the restore keeps its data.
func TestSnapshot(t *testing.T) {
	ctx, e := start(t, 4*time.Minute)
	snaps, err := e.Snapshots()
	if err != nil {
		t.Fatal(err)
	}
	src := e.createStatefulSet(ctx, statefulSet("db", 1))[0]
	sb := e.bindingOf(ctx, src)
	before := e.writeBlob(ctx, src.Name)

	e.step("a VolumeSnapshot of %s, made on %s", sb.claim, sb.node)
	content := e.snapshotOf(ctx, snaps, "before", sb.claim)
	if node := content.Labels[provisioner.ManagedByLabel]; node != sb.node {
		t.Errorf("content %s is labelled for node %q, want %s", content.Name, node, sb.node)
	}
	handle := *content.Status.SnapshotHandle
	if !e.hasSnapshot(sb.node, handle) {
		t.Errorf("snapshot %s is not in the data root of %s", handle, sb.node)
	}

	e.step("the pod writes more; a claim restoring the snapshot has the data of before")
	if e.writeBlob(ctx, src.Name) == before {
		t.Fatal("the new blob has the old checksum")
	}
	restoreOf := func(name string) v1.PersistentVolumeClaim {
		c := claim(name, "32Mi", v1.ReadWriteOnce)
		c.Spec.DataSource = &v1.TypedLocalObjectReference{APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: "before"}
		return c
	}
	e.createClaim(ctx, restoreOf("restored"))
	e.createPod(ctx, "restored", "restored", onNode(sb.node))
	rb := e.bindingOf(ctx, e.podReady(ctx, "restored"))
	if rb.node != sb.node || rb.pv == sb.pv {
		t.Fatalf("restore %s, want a PV of its own on %s", rb, sb.node)
	}
	e.checkBlob(ctx, "restored", before, "in the restore")

	other := e.otherNode(sb.node)
	e.step("a restore with its pod pinned to %s: refused there, naming %s", other, sb.node)
	e.createClaim(ctx, restoreOf("stray"))
	e.createPod(ctx, "stray", "stray", onNode(other))
	ev, err := e.WaitForEvent(ctx, e.ns, "PersistentVolumeClaim", "stray", func(ev *v1.Event) bool {
		return ev.Type == v1.EventTypeWarning && strings.Contains(ev.Message, "which is on node "+sb.node)
	})
	if err != nil {
		t.Fatalf("no Warning event naming the snapshot's node: %v", err)
	}
	t.Logf("refused: %s", ev.Message)

	e.step("a restore whose pod prefers %s: moved to %s, and its pod follows", other, sb.node)
	e.createClaim(ctx, restoreOf("moved"))
	e.createPod(ctx, "moved", "moved", prefersNode(other))
	mb := e.bindingOf(ctx, e.podReady(ctx, "moved"))
	if mb.node != sb.node {
		t.Errorf("restore %s, want it on %s", mb, sb.node)
	}
	e.checkBlob(ctx, "moved", before, "in the restore moved to the snapshot's node")
	if _, err := e.WaitForEvent(ctx, e.ns, "PersistentVolumeClaim", "moved", func(ev *v1.Event) bool {
		return ev.Reason == "MovedToSource"
	}); err != nil {
		t.Errorf("no MovedToSource event on claim moved: %v", err)
	}

	// The snapshot-controller keeps a snapshot that a pending claim
	// restores (SnapshotDeletePending): the stray claim goes first.
	stray, err := e.Client.CoreV1().Pods(e.ns).Get(ctx, "stray", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.deletePod(ctx, stray)
	if err := e.Client.CoreV1().PersistentVolumeClaims(e.ns).Delete(ctx, "stray", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	e.step("the VolumeSnapshot deleted: its snapshot leaves %s", sb.node)
	e.deleteSnapshot(ctx, snaps, content, func() bool { return !e.hasSnapshot(sb.node, handle) })
	e.checkBlob(ctx, "restored", before, "in the restore after its snapshot is gone")
}

// snapshotOf makes VolumeSnapshot name (class stickyvol) of the claim and
// returns its content once it is ready.
func (e *env) snapshotOf(ctx context.Context, snaps snapclientset.Interface, name, claim string) *snapv1.VolumeSnapshotContent {
	e.t.Helper()
	snap := &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: snapv1.VolumeSnapshotSpec{
			VolumeSnapshotClassName: ptr.To("stickyvol"),
			Source:                  snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To(claim)},
		},
	}
	if _, err := snaps.SnapshotV1().VolumeSnapshots(e.ns).Create(ctx, snap, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	content, err := e.WaitForSnapshot(waitCtx, e.ns, name)
	if err != nil {
		e.t.Fatal(err)
	}
	return content
}

// deleteSnapshot deletes the VolumeSnapshot bound to content and waits, a
// minute at most, until both are gone and also() holds.
func (e *env) deleteSnapshot(ctx context.Context, snaps snapclientset.Interface, content *snapv1.VolumeSnapshotContent, also func() bool) {
	e.t.Helper()
	name := content.Spec.VolumeSnapshotRef.Name
	if err := snaps.SnapshotV1().VolumeSnapshots(e.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		e.t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, snapErr := snaps.SnapshotV1().VolumeSnapshots(e.ns).Get(ctx, name, metav1.GetOptions{})
		_, contentErr := snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, content.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(snapErr) && apierrors.IsNotFound(contentErr) && also(), nil
	})
	if err != nil {
		e.t.Errorf("VolumeSnapshot %s, its content %s or its data still there a minute after it was deleted", name, content.Name)
	}
}

// prefersNode gives the pod a strong preference for node, which the
// scheduler follows when nothing else decides.
func prefersNode(node string) func(*v1.Pod) {
	return func(p *v1.Pod) { p.Spec.Affinity = preferredNode(node) }
}

// hasSnapshot tells whether the node's data root holds snapshot id.
func (e *env) hasSnapshot(node, id string) bool {
	e.t.Helper()
	_, err := os.Lstat(filepath.Join(e.node(node).DataDir, "snapshots", id))
	if err != nil && !os.IsNotExist(err) {
		e.t.Fatal(err)
	}
	return err == nil
}
