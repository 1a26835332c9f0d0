package deploy_test

import (
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
)

// TestVolumeSnapshotClass checks the class a VolumeSnapshot of a stickyvol
// volume names, as deploy/snapshots ships it and the local overlay applies
// it.
func TestVolumeSnapshotClass(t *testing.T) {
	objs := render(t, "snapshots")
	if len(objs) != 1 {
		t.Fatalf("deploy/snapshots renders %d objects, want only the VolumeSnapshotClass", len(objs))
	}
	for _, dir := range []string{"snapshots", "overlays/local"} {
		c := get[*snapv1.VolumeSnapshotClass](t, render(t, dir), className)
		// The snapshot-controller hands a snapshot to the driver the
		// class names; another name and no agent ever takes it.
		if c.Driver != driverName {
			t.Errorf("%s: driver %q, want %q", dir, c.Driver, driverName)
		}
		if c.DeletionPolicy != snapv1.VolumeSnapshotContentDelete {
			t.Errorf("%s: deletionPolicy %q, want Delete: a snapshot's data goes with it", dir, c.DeletionPolicy)
		}
		if c.Labels["app.kubernetes.io/part-of"] != "stickyvol" {
			t.Errorf("%s: labels %v, want app.kubernetes.io/part-of=stickyvol like the base's objects", dir, c.Labels)
		}
	}
}
