package provisioner_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/internal/testutil"
	"github.com/stickyvol/stickyvol/provisioner"
)

func options(c *v1.PersistentVolumeClaim) controller.ProvisionOptions {
	return controller.ProvisionOptions{
		StorageClass:     fixtures.Class(storagev1.VolumeBindingWaitForFirstConsumer),
		PVName:           "pvc-" + string(c.UID),
		PVC:              c,
		SelectedNodeName: c.Annotations[provisioner.AnnSelectedNode],
	}
}

func TestProvisionAndDeleteWithRealDriver(t *testing.T) {
	ctx := fixtures.Context(t, 2)
	nd := startDriver(t, "node-a", 10<<30)
	p := newProvisioner(t, nd)
	c := fixtures.Claim("data-web-0", "node-a", "1Gi", v1.ReadWriteOnce)

	pv, state, err := p.Provision(ctx, options(c))
	if err != nil || state != controller.ProvisioningFinished {
		t.Fatalf("Provision: %v, %s", err, state)
	}
	if pv.Name != "pvc-uid-data-web-0" || pv.Spec.CSI.VolumeHandle != pv.Name || pv.Spec.CSI.Driver != driver.Name {
		t.Errorf("PV %s, handle %s, driver %s", pv.Name, pv.Spec.CSI.VolumeHandle, pv.Spec.CSI.Driver)
	}
	if got := pv.Spec.Capacity.Storage().Value(); got != 1<<30 {
		t.Errorf("capacity %d, want 1Gi", got)
	}
	terms := pv.Spec.NodeAffinity.Required.NodeSelectorTerms
	if len(terms) != 1 || len(terms[0].MatchExpressions) != 1 ||
		terms[0].MatchExpressions[0].Key != driver.TopologyKey ||
		!slices.Equal(terms[0].MatchExpressions[0].Values, []string{"node-a"}) {
		t.Errorf("node affinity %+v, want %s In [node-a]", terms, driver.TopologyKey)
	}
	dir := filepath.Join(nd.dataRoot, "volumes", pv.Name)
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("volume directory: %v, %v; want it with the class' directoryMode 0750", fi, err)
	}

	// A retry after a lost answer gets the same volume, not a second one.
	again, _, err := p.Provision(ctx, options(c))
	if err != nil || again.Spec.CSI.VolumeHandle != pv.Spec.CSI.VolumeHandle || len(nd.volumeDirs(t)) != 1 {
		t.Errorf("second Provision: %v, handle %s, dirs %v", err, again.Spec.CSI.VolumeHandle, nd.volumeDirs(t))
	}

	if err := p.Delete(ctx, pv); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("directory still there after Delete: %v", err)
	}
	if err := p.Delete(ctx, pv); err != nil {
		t.Errorf("Delete of a deleted volume: %v", err)
	}
}

// Claims stickyvol cannot serve are refused before the driver is asked: the
// user gets the event text, and no directory appears anywhere.
func TestRefusalsNeverReachTheDriver(t *testing.T) {
	ctx := fixtures.Context(t, 2)
	nd := startDriver(t, "node-a", 10<<30)
	p := newProvisioner(t, nd)
	for _, tc := range []struct {
		claim *v1.PersistentVolumeClaim
		text  string
	}{
		{fixtures.Claim("shared", "node-a", "1Gi", v1.ReadWriteMany), "ReadWriteMany needs shared storage"},
		{fixtures.Claim("readers", "node-a", "1Gi", v1.ReadOnlyMany), "ReadOnlyMany needs shared storage"},
		{fixtures.Claim("mixed", "node-a", "1Gi", v1.ReadWriteOnce, v1.ReadWriteMany), "ReadWriteMany"},
	} {
		pv, state, err := p.Provision(ctx, options(tc.claim))
		if pv != nil || state != controller.ProvisioningFinished || err == nil || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: PV %v, state %s, error %v; want no PV, Finished, %q", tc.claim.Name, pv, state, err, tc.text)
		}
	}
	if n := nd.createCalls(); n != 0 {
		t.Errorf("%d CreateVolume calls, want none", n)
	}
	if dirs := nd.volumeDirs(t); len(dirs) != 0 {
		t.Errorf("volume directories %v, want none", dirs)
	}
}

func TestNoRoomReschedules(t *testing.T) {
	ctx := fixtures.Context(t, 2)
	nd := startDriver(t, "node-a", 1<<30)
	p := newProvisioner(t, nd)
	_, state, err := p.Provision(ctx, options(fixtures.Claim("big", "node-a", "2Gi", v1.ReadWriteOnce)))
	if state != controller.ProvisioningReschedule {
		t.Errorf("state %s, want Reschedule", state)
	}
	if err == nil || !strings.Contains(err.Error(), "no room") || !strings.Contains(err.Error(), "--capacity") {
		t.Errorf("error %v, want one that says the node is full and what to do", err)
	}
	if dirs := nd.volumeDirs(t); len(dirs) != 0 {
		t.Errorf("volume directories %v after a refusal", dirs)
	}
}

// What the driver refuses for good is final, with the driver's reason and
// a hint in the event.
func TestDriverRefusalIsFinished(t *testing.T) {
	ctx := fixtures.Context(t, 2)
	nd := startDriver(t, "node-a", 10<<30)
	p := newProvisioner(t, nd)
	opts := options(fixtures.Claim("c", "node-a", "1Gi", v1.ReadWriteOnce))
	// A bind mount takes no file system options.
	opts.StorageClass.MountOptions = []string{"noatime", "size=1G"}
	_, state, err := p.Provision(ctx, opts)
	if state != controller.ProvisioningFinished || err == nil ||
		!strings.Contains(err.Error(), "fix the StorageClass") || !strings.Contains(err.Error(), `mount option "size=1G"`) {
		t.Errorf("state %s, error %v; want Finished with the driver's reason", state, err)
	}
	if dirs := nd.volumeDirs(t); len(dirs) != 0 {
		t.Errorf("volume directories %v after a refusal", dirs)
	}
}

func TestSelectedNodeGoneReschedules(t *testing.T) {
	ctx := fixtures.Context(t, 2)
	nd := startDriver(t, "node-a", 10<<30)
	p, err := provisioner.New(provisioner.Config{NodeName: "node-a", DriverName: driver.Name,
		TopologyKey: driver.TopologyKey, ControllerClient: nd.controller, Nodes: nodeLister(t)})
	if err != nil {
		t.Fatal(err)
	}
	_, state, err := p.Provision(ctx, options(fixtures.Claim("orphan", "node-a", "1Gi", v1.ReadWriteOnce)))
	if state != controller.ProvisioningReschedule || err == nil || !strings.Contains(err.Error(), "no longer exists") {
		t.Errorf("state %s, error %v; want Reschedule because node-a is gone", state, err)
	}
	if n := nd.createCalls(); n != 0 {
		t.Errorf("%d CreateVolume calls for a node that is gone", n)
	}
}

// A driver that does not answer may still be working: the library must
// keep the claim in progress (InBackground), not give up on it.
func TestDriverDownIsInBackground(t *testing.T) {
	ctx := fixtures.Context(t, 2)
	nd := startDriver(t, "node-a", 10<<30)
	p := newProvisioner(t, nd)
	_ = nd.conn.Close()
	_, state, err := p.Provision(ctx, options(fixtures.Claim("c", "node-a", "1Gi", v1.ReadWriteOnce)))
	if state != controller.ProvisioningInBackground || err == nil {
		t.Errorf("state %s, error %v; want InBackground", state, err)
	}
}

func TestShouldProvisionOnlyThisNode(t *testing.T) {
	ctx := fixtures.Context(t, 2)
	nd := startDriver(t, "node-a", 10<<30)
	p := newProvisioner(t, nd)
	alpha := fixtures.Claim("alpha", "", "1Gi", v1.ReadWriteOnce)
	alpha.Annotations["volume.alpha.kubernetes.io/selected-node"] = "node-a"
	for _, tc := range []struct {
		claim *v1.PersistentVolumeClaim
		want  bool
	}{
		{fixtures.Claim("mine", "node-a", "1Gi", v1.ReadWriteOnce), true},
		{fixtures.Claim("theirs", "node-b", "1Gi", v1.ReadWriteOnce), false},
		{fixtures.Claim("unplaced", "", "1Gi", v1.ReadWriteOnce), false},
		{alpha, true},
	} {
		if got := p.ShouldProvision(ctx, tc.claim); got != tc.want {
			t.Errorf("%s: ShouldProvision = %v, want %v", tc.claim.Name, got, tc.want)
		}
	}
	// The library asks only after ShouldProvision, but a claim that moved
	// in between must still be left alone.
	opts := options(fixtures.Claim("moved", "node-b", "1Gi", v1.ReadWriteOnce))
	var ignored *controller.IgnoredError
	if _, _, err := p.Provision(ctx, opts); !errors.As(err, &ignored) {
		t.Errorf("Provision for node-b on node-a: %v, want IgnoredError", err)
	}
}

func TestDeleteOnlyThisNodesVolumes(t *testing.T) {
	ctx := fixtures.Context(t, 2)
	nd := startDriver(t, "node-a", 10<<30)
	p := newProvisioner(t, nd)
	pv := func(name, key, node, drv string) *v1.PersistentVolume {
		return &v1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: v1.PersistentVolumeSpec{
				PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: name}},
				NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
					MatchExpressions: []v1.NodeSelectorRequirement{{Key: key, Operator: v1.NodeSelectorOpIn, Values: []string{node}}}}}}},
			},
		}
	}
	for _, tc := range []struct {
		pv      *v1.PersistentVolume
		ignored bool
	}{
		{pv("pvc-b", driver.TopologyKey, "node-b", driver.Name), true},
		{pv("pvc-host-b", v1.LabelHostname, "node-b", driver.Name), true},
		{pv("pvc-other-driver", driver.TopologyKey, "node-a", "other.csi.example.com"), true},
		{pv("pvc-a", driver.TopologyKey, "node-a", driver.Name), false},
		{pv("pvc-host-a", v1.LabelHostname, "node-a", driver.Name), false},
	} {
		err := p.Delete(ctx, tc.pv)
		var ignored *controller.IgnoredError
		if got := errors.As(err, &ignored); got != tc.ignored {
			t.Errorf("%s: Delete = %v, want ignored=%v", tc.pv.Name, err, tc.ignored)
		}
		if !tc.ignored && err != nil {
			t.Errorf("%s: Delete = %v", tc.pv.Name, err)
		}
	}
	if n := nd.calls[csi.Controller_DeleteVolume_FullMethodName]; n != 2 {
		t.Errorf("%d DeleteVolume calls, want 2 (only this node's volumes)", n)
	}
}

// A volume still bind-mounted into a pod is not deleted; the library hears
// VolumeInUseError and retries without a Warning.
func TestDeleteOfPublishedVolumeWaits(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := fixtures.Context(t, 2)
	nd := startDriver(t, "node-a", 10<<30)
	p := newProvisioner(t, nd)
	pv, _, err := p.Provision(ctx, options(fixtures.Claim("busy", "node-a", "1Gi", v1.ReadWriteOnce)))
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "mnt")
	capability := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER},
	}
	if _, err := nd.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: pv.Spec.CSI.VolumeHandle, TargetPath: target, VolumeCapability: capability}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = nd.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle, TargetPath: target})
	})

	var inUse *controller.VolumeInUseError
	if err := p.Delete(ctx, pv); !errors.As(err, &inUse) {
		t.Fatalf("Delete of a mounted volume = %v, want VolumeInUseError", err)
	}
	if len(nd.volumeDirs(t)) != 1 {
		t.Fatal("the mounted volume's directory is gone")
	}
	if _, err := nd.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if err := p.Delete(ctx, pv); err != nil || len(nd.volumeDirs(t)) != 0 {
		t.Errorf("Delete after unpublish: %v, dirs %v", err, nd.volumeDirs(t))
	}
}
