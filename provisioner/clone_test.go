package provisioner_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/provisioner"
)

// cloneProvisioner is newProvisioner with listers holding objs (claims
// and PVs), as NewController's informers would.
func cloneProvisioner(t *testing.T, nd *nodeDriver, objs ...any) *provisioner.Provisioner {
	t.Helper()
	return restoreProvisioner(t, nd, nil, objs...)
}

// restoreProvisioner is cloneProvisioner reading snapshots from snaps.
func restoreProvisioner(t *testing.T, nd *nodeDriver, snaps provisioner.SnapshotReader, objs ...any) *provisioner.Provisioner {
	t.Helper()
	f := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	claims, pvs := f.Core().V1().PersistentVolumeClaims(), f.Core().V1().PersistentVolumes()
	for _, o := range objs {
		store := claims.Informer().GetStore()
		if _, ok := o.(*v1.PersistentVolume); ok {
			store = pvs.Informer().GetStore()
		}
		if err := store.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	p, err := provisioner.New(provisioner.Config{
		NodeName: nd.name, DriverName: driver.Name, TopologyKey: driver.TopologyKey,
		ControllerClient: nd.controller, Nodes: nodeLister(t, fixtures.ReadyNode(nd.name)),
		Claims: claims.Lister(), Volumes: pvs.Lister(), Snapshots: snaps,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// cloneOf is a claim on node whose dataSource is claim src.
func cloneOf(name, node, size, src string) *v1.PersistentVolumeClaim {
	c := fixtures.Claim(name, node, size, v1.ReadWriteOnce)
	c.Spec.DataSource = &v1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: src}
	c.Spec.DataSourceRef = &v1.TypedObjectReference{Kind: "PersistentVolumeClaim", Name: src}
	return c
}

// TestProvisionClone: a clone of a bound claim of this driver, on its
// source's node, gets a PV whose volume holds the source's data and is at
// least as large; elsewhere it is refused with a message that names the
// source's node, and stays selected there for the controller to move; a
// source that is not bound, of another driver or another volumeMode, or a
// snapshot this agent cannot read, gets no PV.
func TestProvisionClone(t *testing.T) {
	ctx := fixtures.Context(t, 2)
	nd := startDriver(t, "node-a", 10<<30)
	source := fixtures.Claim("data-web-0", "node-a", "2Gi", v1.ReadWriteOnce)
	srcPV, _, err := newProvisioner(t, nd).Provision(ctx, options(source))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(nd.dataRoot, "volumes", srcPV.Name, "data"), []byte("web-0"), 0o600); err != nil {
		t.Fatal(err)
	}
	source.Spec.VolumeName, source.Status.Phase = srcPV.Name, v1.ClaimBound
	pending := fixtures.Claim("pending", "node-a", "1Gi", v1.ReadWriteOnce)
	foreign := fixtures.Claim("foreign", "node-a", "1Gi", v1.ReadWriteOnce)
	foreign.Spec.VolumeName, foreign.Status.Phase = "pv-foreign", v1.ClaimBound
	foreignPV := srcPV.DeepCopy()
	foreignPV.Name, foreignPV.Spec.CSI.Driver = "pv-foreign", "other.csi.example.com"
	p := cloneProvisioner(t, nd, source, pending, foreign, srcPV, foreignPV)

	// 1Gi asked, 2Gi source: the clone has the source's size.
	clone := cloneOf("copy", "node-a", "1Gi", "data-web-0")
	pv, state, err := p.Provision(ctx, options(clone))
	if err != nil || state != controller.ProvisioningFinished {
		t.Fatalf("Provision of a clone: %v, %s", err, state)
	}
	if got := pv.Spec.Capacity.Storage().Value(); got != 2<<30 {
		t.Errorf("clone's capacity %d, want the source's 2Gi", got)
	}
	if data, err := os.ReadFile(filepath.Join(nd.dataRoot, "volumes", pv.Name, "data")); err != nil || string(data) != "web-0" {
		t.Errorf("clone's data %q, %v", data, err)
	}

	// Another node's instance refuses it, keeping it selected to its node
	// for the controller to move, and names the source's node.
	other := startDriver(t, "node-b", 10<<30)
	pb := cloneProvisioner(t, other, source, srcPV)
	_, state, err = pb.Provision(ctx, options(cloneOf("elsewhere", "node-b", "1Gi", "data-web-0")))
	want := "the claim clones data-web-0, whose volume is on node node-a: it can only be made there"
	if state != controller.ProvisioningFinished || err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("clone on another node: %s, %v; want a refusal (no reschedule) saying %q", state, err, want)
	}

	block := v1.PersistentVolumeBlock
	blockClone := cloneOf("raw", "node-a", "2Gi", "data-web-0")
	blockClone.Spec.VolumeMode = &block
	snapshotGroup := "snapshot.storage.k8s.io"
	snapshot := fixtures.Claim("restore", "node-a", "1Gi", v1.ReadWriteOnce)
	snapshot.Spec.DataSourceRef = &v1.TypedObjectReference{APIGroup: &snapshotGroup, Kind: "VolumeSnapshot", Name: "nightly"}
	for _, tc := range []struct {
		claim *v1.PersistentVolumeClaim
		want  string
	}{
		{cloneOf("c1", "node-a", "1Gi", "pending"), `claim "pending", which is not bound`},
		{cloneOf("c2", "node-a", "1Gi", "missing"), `claim "missing", which does not exist`},
		{cloneOf("c3", "node-a", "1Gi", "foreign"), "is not a " + driver.Name + " volume"},
		{blockClone, "has volumeMode Filesystem and this claim asks for Block"},
		{snapshot, `VolumeSnapshot "nightly"`},
	} {
		pv, _, err := p.Provision(ctx, options(tc.claim))
		if pv != nil || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: PV %v, error %v; want none and %q", tc.claim.Name, pv, err, tc.want)
		}
	}
	if dirs := nd.volumeDirs(t); len(dirs) != 2 {
		t.Errorf("volumes on node-a: %v, want the source and its one clone", dirs)
	}
}
