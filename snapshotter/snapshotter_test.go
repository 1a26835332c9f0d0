package snapshotter_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/provisioner"
	"github.com/stickyvol/stickyvol/snapshotter"
)

func TestMain(m *testing.M) { fixtures.MainWithoutWatchList(m) }

// content is a dynamic VolumeSnapshotContent of volume as the
// snapshot-controller makes it: labelled with node, bound to a
// VolumeSnapshot of UID uid.
func content(name, node, volume, uid string) *snapv1.VolumeSnapshotContent {
	return &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: "1", Labels: map[string]string{provisioner.ManagedByLabel: node}},
		Spec: snapv1.VolumeSnapshotContentSpec{
			Driver:                  driver.Name,
			VolumeSnapshotClassName: ptr.To("stickyvol"),
			DeletionPolicy:          snapv1.VolumeSnapshotContentDelete,
			Source:                  snapv1.VolumeSnapshotContentSource{VolumeHandle: ptr.To(volume)},
			VolumeSnapshotRef:       v1.ObjectReference{Kind: "VolumeSnapshot", Namespace: "default", Name: "snap-" + uid, UID: types.UID(uid)},
		},
	}
}

// TestSnapshotsOfThisNode: the agent's snapshotter takes a snapshot for
// the content labelled with its node, through the real driver, and fills
// in the content's status as csi-snapshotter does; a content labelled with
// another node is left alone. Without the snapshot API it waits.
func TestSnapshotsOfThisNode(t *testing.T) {
	ctx, cancel := context.WithCancel(fixtures.Context(t, 2))
	defer cancel()
	d := fixtures.StartDriver(t, "node-a", 10<<30)
	ctrl := csi.NewControllerClient(d.Conn)
	vol, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name:               "pvc-1",
		CapacityRange:      &csi.CapacityRange{RequiredBytes: 1 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}, AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.DataRoot, "volumes", vol.GetVolume().GetVolumeId(), "data"), []byte("v1"), 0o600); err != nil {
		t.Fatal(err)
	}
	snaps := fixtures.SnapshotClientset(
		content("snapcontent-mine", "node-a", "pvc-1", "uid-mine"),
		content("snapcontent-theirs", "node-b", "pvc-2", "uid-theirs"),
		&snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: "stickyvol", ResourceVersion: "1"},
			Driver: driver.Name, DeletionPolicy: snapv1.VolumeSnapshotContentDelete},
	)
	s, err := snapshotter.New(snapshotter.Config{
		NodeName: "node-a", DriverName: driver.Name, Conn: d.Conn, Client: fake.NewClientset(), Snapshots: snaps,
		CRDInterval: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	// No snapshot API yet: nothing happens.
	get := func(name string) *snapv1.VolumeSnapshotContent {
		c, err := snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, name, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		return c
	}
	if c := get("snapcontent-mine"); c.Status != nil {
		t.Fatalf("status %+v before the snapshot API is there", c.Status)
	}
	snaps.Resources = []*metav1.APIResourceList{{GroupVersion: "snapshot.storage.k8s.io/v1", APIResources: []metav1.APIResource{
		{Name: "volumesnapshotcontents"}, {Name: "volumesnapshotclasses"}, {Name: "volumesnapshots"},
	}}}

	fixtures.Eventually(t, "the snapshot of this node's content", func(context.Context) (bool, error) {
		st := get("snapcontent-mine").Status
		return st != nil && st.ReadyToUse != nil && *st.ReadyToUse && st.SnapshotHandle != nil, nil
	})
	st := get("snapcontent-mine").Status
	if *st.SnapshotHandle != "snapshot-uid-mine" || st.RestoreSize == nil || *st.RestoreSize != 1<<20 {
		t.Errorf("status: handle %s, restore size %v; want snapshot-uid-mine, 1 MiB", *st.SnapshotHandle, st.RestoreSize)
	}
	list, err := ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.GetEntries()); n != 1 || list.GetEntries()[0].GetSnapshot().GetSourceVolumeId() != "pvc-1" {
		t.Errorf("driver's snapshots: %v; want one, of pvc-1", list.GetEntries())
	}
	if c := get("snapcontent-theirs"); c.Status != nil {
		t.Errorf("another node's content got status %+v", c.Status)
	}

	// Pre-provisioned contents of no node: the one whose snapshot this
	// node's driver holds is claimed and checked, the other left alone.
	for name, handle := range map[string]string{"snapcontent-by-hand": "snapshot-uid-mine", "snapcontent-unknown": "snapshot-elsewhere"} {
		c := content(name, "", "", "uid-"+name)
		delete(c.Labels, provisioner.ManagedByLabel)
		c.Spec.Source = snapv1.VolumeSnapshotContentSource{SnapshotHandle: ptr.To(handle)}
		c.Spec.DeletionPolicy = snapv1.VolumeSnapshotContentRetain
		if _, err := snaps.SnapshotV1().VolumeSnapshotContents().Create(ctx, c, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	fixtures.Eventually(t, "the pre-provisioned content of this node's snapshot checked", func(context.Context) (bool, error) {
		c := get("snapcontent-by-hand")
		return c.Labels[provisioner.ManagedByLabel] == "node-a" && c.Status != nil && ptr.Deref(c.Status.ReadyToUse, false), nil
	})
	// Only its labels tell: the fake clientset's watch ignores label
	// selectors, so the sidecar controller here sees every new content.
	if c := get("snapcontent-unknown"); len(c.Labels) != 0 {
		t.Errorf("a content of a snapshot no node holds got labels %v; want none", c.Labels)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
