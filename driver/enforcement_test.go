package driver

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

func enforcedRequest(name, value string) *csi.CreateVolumeRequest {
	req := createRequest(name)
	req.Parameters = map[string]string{ParamSizeEnforcement: value}
	return req
}

// A class with sizeEnforcement: required gets no volume on a node whose new
// volumes are directories: CreateVolume answers ResourceExhausted (so the
// claim goes back to the scheduler) with the reason, makes nothing, and
// GetCapacity reports no room for that class, so that the published
// capacity keeps its claims off the node. bestEffort, and no parameter,
// take the directory.
func TestSizeEnforcementOnDirectories(t *testing.T) {
	testutil.RequireRoot(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	if ts.Backend() != BackendDirectory {
		t.Fatalf("default backend %q, want %q on a temporary directory", ts.Backend(), BackendDirectory)
	}
	_, err := ts.controller.CreateVolume(ctx, enforcedRequest("strict", SizeEnforcementRequired))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), NotEnforcedMessage) {
		t.Errorf("CreateVolume, sizeEnforcement required, on directories: %v; want ResourceExhausted: %s", err, NotEnforcedMessage)
	}
	if vols := ts.Volumes(); len(vols) != 0 {
		t.Errorf("volumes after the refusal: %+v, want none", vols)
	}
	for _, value := range []string{SizeEnforcementBestEffort, ""} {
		req := createRequest("loose" + value)
		if value != "" {
			req = enforcedRequest("loose"+value, value)
		}
		if _, err := ts.controller.CreateVolume(ctx, req); err != nil {
			t.Errorf("CreateVolume, sizeEnforcement %q: %v", value, err)
		}
	}
	for value, want := range map[string]bool{SizeEnforcementRequired: false, SizeEnforcementBestEffort: true} {
		resp, err := ts.controller.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{ParamSizeEnforcement: value}})
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.GetAvailableCapacity() > 0 && resp.GetMaximumVolumeSize().GetValue() > 0; got != want {
			t.Errorf("GetCapacity, sizeEnforcement %q: available %d, maximum %v; want room %v",
				value, resp.GetAvailableCapacity(), resp.GetMaximumVolumeSize(), want)
		}
	}
}

// On a backend that enforces sizes, required is served; a value that is
// neither is refused as a bad parameter.
func TestSizeEnforcementOnAnEnforcingBackend(t *testing.T) {
	cfg, _, _ := fakeConfig(t)
	ts := startServer(t, cfg)
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, enforcedRequest("strict", SizeEnforcementRequired)); err != nil {
		t.Errorf("CreateVolume, sizeEnforcement required, on backend %s: %v", ts.Backend(), err)
	}
	_, err := ts.controller.CreateVolume(ctx, enforcedRequest("odd", "always"))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), ParamSizeEnforcement) {
		t.Errorf("CreateVolume, sizeEnforcement always: %v; want InvalidArgument naming the parameter", err)
	}
}
