package driver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// TestDataRootIdentity: a volume's PV carries the identity of the data root
// it was made on. The same data root after a restart publishes it; a wiped
// one (a node back under its name with a new disk) refuses it with a message
// that says so, not a bare NotFound, and never an empty directory.
func TestDataRootIdentity(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := testConfig(t)
	ts := startServer(t, cfg)
	ctx := testContext(t)
	resp, err := ts.controller.CreateVolume(ctx, createRequest("vol"))
	if err != nil {
		t.Fatal(err)
	}
	made := resp.GetVolume().GetVolumeContext()[VolumeContextDataRoot]
	if !identityPattern.MatchString(made) {
		t.Fatalf("volume context %v, want %s with the data root's identity", resp.GetVolume().GetVolumeContext(), VolumeContextDataRoot)
	}
	pod := filepath.Join(ts.dir, "pod")
	mustMkdir(t, pod)
	publish := func(ts *testServer) error {
		req := publishRequest("vol", filepath.Join(pod, "mount"))
		req.VolumeContext = resp.GetVolume().GetVolumeContext()
		_, err := ts.node.NodePublishVolume(ctx, req)
		if err == nil {
			_, err = ts.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: req.TargetPath})
		}
		return err
	}

	ts.stop()
	ts = startServer(t, cfg)
	if err := publish(ts); err != nil {
		t.Errorf("publish after a restart on the same data root: %v", err)
	}
	if again, err := ts.controller.CreateVolume(ctx, createRequest("vol")); err != nil ||
		again.GetVolume().GetVolumeContext()[VolumeContextDataRoot] != made {
		t.Errorf("the identity changed across a restart: %v, %v", again.GetVolume().GetVolumeContext(), err)
	}

	ts.stop()
	if err := os.RemoveAll(cfg.DataRoot); err != nil {
		t.Fatal(err)
	}
	ts = startServer(t, cfg)
	err = publish(ts)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "was made on data root "+made) {
		t.Errorf("publish on a wiped data root: %v, want FailedPrecondition naming the volume's data root", err)
	}
}
