package duties_test

import (
	"context"
	"slices"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/duties"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/provisioner"
)

const boundProtection = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"

// snapshotContent is a content of drv's snapshot on node, as the
// snapshot-controller makes it; deleting sets its deletionTimestamp, as a
// deleted VolumeSnapshot of deletionPolicy Delete does.
func snapshotContent(name, drv, node string, deleting bool) *snapv1.VolumeSnapshotContent {
	c := &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name), ResourceVersion: "1",
			Labels:     map[string]string{provisioner.ManagedByLabel: node},
			Finalizers: []string{boundProtection, "example.com/backup"}},
		Spec: snapv1.VolumeSnapshotContentSpec{
			Driver:         drv,
			DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
			Source:         snapv1.VolumeSnapshotContentSource{VolumeHandle: ptr.To("pvc-" + name)},
		},
	}
	if deleting {
		c.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	}
	return c
}

// TestLostSnapshots: node-b is gone. Its content that is being deleted
// loses the finalizer no agent is left to remove, with an event, and keeps
// any other; its content that nobody deletes, another driver's, and one of
// a live node are left alone. When node-c's Node object is deleted, its
// deleted content goes the same way.
func TestLostSnapshots(t *testing.T) {
	lost := snapshotContent("lost", driver.Name, "node-b", true)
	kept := snapshotContent("kept", driver.Name, "node-b", false)
	theirs := snapshotContent("theirs", "other.example.com", "node-b", true)
	live := snapshotContent("live", driver.Name, "node-a", true)
	later := snapshotContent("later", driver.Name, "node-c", true)
	snaps := fixtures.SnapshotClientset(lost, kept, theirs, live, later)
	snaps.Resources = []*metav1.APIResourceList{{GroupVersion: "snapshot.storage.k8s.io/v1", APIResources: []metav1.APIResource{
		{Name: "volumesnapshotcontents"}, {Name: "volumesnapshotclasses"}}}}
	client := fake.NewClientset(fixtures.ReadyNode("node-a"), fixtures.ReadyNode("node-c"))
	factory := informers.NewSharedInformerFactory(client, 0)
	l, err := duties.NewLostSnapshots(duties.LostSnapshotsConfig{
		DriverName: driver.Name, Client: client, Snapshots: snaps, Informers: factory, CRDInterval: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	runDuty(t, l.Run, factory)

	finalizers := func(ctx context.Context, name string) []string {
		c, err := snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("content %s: %v", name, err)
		}
		return c.Finalizers
	}
	released := func(name string) func(context.Context) (bool, error) {
		return func(ctx context.Context) (bool, error) {
			return slices.Equal(finalizers(ctx, name), []string{"example.com/backup"}), nil
		}
	}
	fixtures.Eventually(t, "the deleted content of gone node-b to lose its finalizer", released("lost"))
	fixtures.Eventually(t, "the event that says why", func(ctx context.Context) (bool, error) {
		return hasEvent(ctx, client, "VolumeSnapshotContent", "lost", "NodeGone"), nil
	})
	for _, name := range []string{"kept", "theirs", "live", "later"} {
		if got := finalizers(t.Context(), name); !slices.Contains(got, boundProtection) {
			t.Errorf("content %s lost its finalizer: %v", name, got)
		}
	}

	if err := client.CoreV1().Nodes().Delete(t.Context(), "node-c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	fixtures.Eventually(t, "node-c's deleted content to lose its finalizer once node-c is deleted", released("later"))
}
