package provisioner_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/provisioner"
)

// TestReconcile: on node-a the driver has a volume with a PV, one a Pending
// claim waits for, and one with neither (the agent stopped before saving
// the PV and the claim was deleted); a PV names node-a's volume that the
// driver does not have. An inline ephemeral volume, which never has a PV,
// is never an orphan.
func TestReconcile(t *testing.T) {
	nd := startDriver(t, "node-a", 10<<30)
	for _, id := range []string{"pvc-kept", "pvc-uid-waiting", "pvc-leaked"} {
		if _, err := nd.controller.CreateVolume(t.Context(), &csi.CreateVolumeRequest{Name: id,
			VolumeCapabilities: []*csi.VolumeCapability{{
				AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
				AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	waiting := fixtures.Claim("waiting", "node-a", "1Gi", v1.ReadWriteOnce)
	waiting.UID = types.UID("uid-waiting")
	wiped := fixtures.PVOn("pvc-wiped", "node-a")
	wiped.Spec.ClaimRef = &v1.ObjectReference{Namespace: "web", Name: "data-web-1"}
	client := fake.NewClientset(fixtures.PVOn("pvc-kept", "node-a"), wiped, fixtures.PVOn("pvc-elsewhere", "node-b"), waiting)
	factory := informers.NewSharedInformerFactory(client, 0)
	const grace = 10 * time.Minute
	r, err := provisioner.NewReconciler(provisioner.ReconcilerConfig{NodeName: "node-a", DriverName: driver.Name,
		TopologyKey: driver.TopologyKey, ControllerClient: withInline{nd.controller}, Client: client, Informers: factory,
		Grace: grace, DeleteOrphansAfter: 2 * grace})
	if err != nil {
		t.Fatal(err)
	}
	ctx := fixtures.Context(t, 2)
	factory.StartWithContext(ctx)
	factory.WaitForCacheSync(ctx.Done())
	recorder := record.NewFakeRecorder(10)

	if f := r.Findings(); !f.Checked.IsZero() || f.Orphans != nil || f.Missing != nil {
		t.Errorf("findings before the first check: %+v", f)
	}
	start := time.Now()
	wipedMissing := []provisioner.MissingVolume{{PV: "pvc-wiped", VolumeID: "pvc-wiped",
		Claim: types.NamespacedName{Namespace: "web", Name: "data-web-1"}}}
	check := func(at time.Duration, wantOrphans []provisioner.Orphan) {
		t.Helper()
		if err := r.Check(ctx, recorder, start.Add(at)); err != nil {
			t.Fatal(err)
		}
		f := r.Findings()
		if !f.Checked.Equal(start.Add(at)) || !slices.Equal(f.Orphans, wantOrphans) || !slices.Equal(f.Missing, wipedMissing) {
			t.Errorf("after %s: %+v; want checked then, orphans %+v, missing %+v", at, f, wantOrphans, wipedMissing)
		}
	}
	// First sight: a suspect, not yet an orphan.
	check(0, nil)
	// An orphan since it was first seen so.
	check(grace, []provisioner.Orphan{{VolumeID: "pvc-leaked", Since: start}})
	if got := len(recorder.Events); got != 1 {
		t.Errorf("%d events, want one VolumeMissing for pvc-wiped however often it is checked", got)
	} else if e := <-recorder.Events; !strings.HasPrefix(e, "Warning VolumeMissing The stickyvol driver on node node-a has no volume pvc-wiped") {
		t.Errorf("event %q", e)
	}
	if dirs := nd.volumeDirs(t); !slices.Contains(dirs, "pvc-leaked") {
		t.Errorf("the orphan was deleted before --delete-orphans-after: %v", dirs)
	}
	// After DeleteOrphansAfter the orphan goes; the others stay.
	check(2*grace, nil)
	if dirs := nd.volumeDirs(t); !slices.Equal(dirs, []string{"pvc-kept", "pvc-uid-waiting"}) {
		t.Errorf("volume directories %v, want the orphan gone and the others kept", dirs)
	}

	if _, err := provisioner.NewReconciler(provisioner.ReconcilerConfig{NodeName: "node-a", DriverName: driver.Name,
		TopologyKey: driver.TopologyKey, ControllerClient: nd.controller, Client: client, Informers: factory,
		Grace: grace, DeleteOrphansAfter: time.Minute}); err == nil {
		t.Error("deleting orphans sooner than the grace period was accepted")
	}
}

// withInline is a driver that also lists an inline ephemeral volume,
// csi-inline, and refuses to delete it: it is in use.
type withInline struct{ csi.ControllerClient }

func (c withInline) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest, opts ...grpc.CallOption) (*csi.ListVolumesResponse, error) {
	resp, err := c.ControllerClient.ListVolumes(ctx, req, opts...)
	if err == nil && req.GetStartingToken() == "" {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: &csi.Volume{
			VolumeId: "csi-inline", VolumeContext: map[string]string{driver.VolumeContextEphemeral: "true"}}})
	}
	return resp, err
}

func (c withInline) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest, opts ...grpc.CallOption) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "csi-inline" {
		return nil, status.Error(codes.FailedPrecondition, "csi-inline is published")
	}
	return c.ControllerClient.DeleteVolume(ctx, req, opts...)
}
