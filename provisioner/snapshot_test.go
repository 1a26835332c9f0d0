package provisioner_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/provisioner"
)

// restoreOf is a claim on node whose dataSourceRef is VolumeSnapshot snap.
func restoreOf(name, node, size, snap string) *v1.PersistentVolumeClaim {
	c := fixtures.Claim(name, node, size, v1.ReadWriteOnce)
	group := "snapshot.storage.k8s.io"
	c.Spec.DataSource = &v1.TypedLocalObjectReference{APIGroup: &group, Kind: "VolumeSnapshot", Name: snap}
	c.Spec.DataSourceRef = &v1.TypedObjectReference{APIGroup: &group, Kind: "VolumeSnapshot", Name: snap}
	return c
}

// boundSnapshot is a ready VolumeSnapshot of namespace default and its
// content, as the snapshot-controller and the node's snapshotter leave
// them: the content labelled with node (none if ""), holding handle.
func boundSnapshot(name, node, driverName, handle string, size int64) (*snapv1.VolumeSnapshot, *snapv1.VolumeSnapshotContent) {
	content := &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: "snapcontent-" + name},
		Spec: snapv1.VolumeSnapshotContentSpec{
			Driver: driverName,
			Source: snapv1.VolumeSnapshotContentSource{VolumeHandle: ptr.To("pvc-source")},
		},
		Status: &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: ptr.To(handle), RestoreSize: ptr.To(size), ReadyToUse: ptr.To(true)},
	}
	if node != "" {
		content.Labels = map[string]string{provisioner.ManagedByLabel: node}
	}
	snap := &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Status: &snapv1.VolumeSnapshotStatus{
			BoundVolumeSnapshotContentName: ptr.To(content.Name), ReadyToUse: ptr.To(true), RestoreSize: nil,
		},
	}
	return snap, content
}

// TestProvisionRestore: a claim restoring a ready snapshot of this driver,
// on the snapshot's node, gets a volume with the data of the moment of the
// snapshot, at least the snapshot's size; on another node it is refused
// naming the snapshot's node (from the content's managed-by label, or else
// the source PV's node) and stays selected there for the controller to move; a snapshot not ready, missing or of
// another driver gets no PV.
func TestProvisionRestore(t *testing.T) {
	ctx := fixtures.Context(t, 2)
	nd := startDriver(t, "node-a", 10<<30)
	source := fixtures.Claim("data-db-0", "node-a", "2Gi", v1.ReadWriteOnce)
	srcPV, _, err := newProvisioner(t, nd).Provision(ctx, options(source))
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(nd.dataRoot, "volumes", srcPV.Name, "data")
	if err := os.WriteFile(data, []byte("before"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := nd.controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snapshot-1", SourceVolumeId: srcPV.Name}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(data, []byte("after"), 0o600); err != nil {
		t.Fatal(err)
	}

	labelled, labelledContent := boundSnapshot("nightly", "node-a", driver.Name, "snapshot-1", 2<<30)
	unlabelled, unlabelledContent := boundSnapshot("by-hand", "", driver.Name, "snapshot-1", 2<<30)
	unlabelledContent.Spec.Source.VolumeHandle = ptr.To(srcPV.Name)
	foreign, foreignContent := boundSnapshot("foreign", "node-a", "other.csi.example.com", "x", 1<<30)
	pending, _ := boundSnapshot("pending", "node-a", driver.Name, "snapshot-2", 1<<30)
	pending.Status.ReadyToUse = ptr.To(false)
	snaps := provisioner.ClientSnapshots(fixtures.SnapshotClientset(labelled, labelledContent, unlabelled, unlabelledContent,
		foreign, foreignContent, pending))
	p := restoreProvisioner(t, nd, snaps, srcPV)

	// 1Gi asked, 2Gi snapshot: the restore has the snapshot's size and
	// the data of before.
	pv, state, err := p.Provision(ctx, options(restoreOf("restored", "node-a", "1Gi", "nightly")))
	if err != nil || state != controller.ProvisioningFinished {
		t.Fatalf("Provision of a restore: %v, %s", err, state)
	}
	if got := pv.Spec.Capacity.Storage().Value(); got != 2<<30 {
		t.Errorf("restore's capacity %d, want the snapshot's 2Gi", got)
	}
	if got, err := os.ReadFile(filepath.Join(nd.dataRoot, "volumes", pv.Name, "data")); err != nil || string(got) != "before" {
		t.Errorf("restore's data %q, %v; want %q", got, err, "before")
	}

	// Another node's instance refuses both, keeping them selected to its
	// node for the controller to move, and names the snapshot's node.
	other := startDriver(t, "node-b", 10<<30)
	pb := restoreProvisioner(t, other, snaps, srcPV)
	for _, snap := range []string{"nightly", "by-hand"} {
		_, state, err = pb.Provision(ctx, options(restoreOf("elsewhere-"+snap, "node-b", "1Gi", snap)))
		want := "the claim restores VolumeSnapshot " + snap + ", which is on node node-a: it can only be made there"
		if state != controller.ProvisioningFinished || err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("restore of %s on another node: %s, %v; want a refusal (no reschedule) saying %q", snap, state, err, want)
		}
	}

	for _, tc := range []struct {
		claim *v1.PersistentVolumeClaim
		want  string
	}{
		{restoreOf("r1", "node-a", "1Gi", "pending"), `VolumeSnapshot "pending", which is not ready to use`},
		{restoreOf("r2", "node-a", "1Gi", "missing"), `VolumeSnapshot "missing", which does not exist`},
		{restoreOf("r3", "node-a", "1Gi", "foreign"), "was made by driver other.csi.example.com"},
	} {
		pv, _, err := p.Provision(ctx, options(tc.claim))
		if pv != nil || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: PV %v, error %v; want none and %q", tc.claim.Name, pv, err, tc.want)
		}
	}
	if dirs := nd.volumeDirs(t); len(dirs) != 2 {
		t.Errorf("volumes on node-a: %v, want the source and its one restore", dirs)
	}
}
