package driver

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

func TestCreateVolume(t *testing.T) {
	testutil.RequireRoot(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)

	req := createRequest("pvc-8f0e6f4c-1b7d-4c1e-9e2a-3f5b6c7d8e9f")
	req.Parameters = map[string]string{
		ParamDirectoryMode:                 "0750",
		"csi.storage.k8s.io/pvc/name":      "data-web-0",
		"csi.storage.k8s.io/pvc/namespace": "shop",
		"csi.storage.k8s.io/pv/name":       req.Name,
	}
	req.AccessibilityRequirements = &csi.TopologyRequirement{
		Requisite: []*csi.Topology{
			{Segments: map[string]string{TopologyKey: "node-0"}},
			{Segments: map[string]string{TopologyKey: "node-1"}},
		},
	}
	first, err := ts.controller.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	v := first.GetVolume()
	if v.GetVolumeId() != req.Name || v.GetCapacityBytes() != 1<<20 {
		t.Errorf("volume = %q, %d bytes; want %q, %d", v.GetVolumeId(), v.GetCapacityBytes(), req.Name, 1<<20)
	}
	if seg := v.GetAccessibleTopology()[0].GetSegments(); len(seg) != 1 || seg[TopologyKey] != "node-1" {
		t.Errorf("accessible topology = %v, want only %s=node-1", seg, TopologyKey)
	}

	dir := filepath.Join(ts.dataRoot, volumesDir, req.Name)
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatalf("volume directory: %v", err)
	}
	if fi.Mode().Perm() != 0o750 {
		t.Errorf("directory mode = %v, want 0750 from directoryMode", fi.Mode().Perm())
	}

	var rec Volume
	data, err := os.ReadFile(filepath.Join(ts.dataRoot, metaDir, req.Name+".json"))
	if err != nil {
		t.Fatalf("record: %v", err)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.State != stateReady || rec.PVCName != "data-web-0" || rec.PVCNamespace != "shop" || rec.PVName != req.Name || rec.DirectoryMode != "0750" {
		t.Errorf("record = %+v", rec)
	}

	// Same request again: same volume, nothing allocated twice.
	again, err := ts.controller.CreateVolume(ctx, req)
	if err != nil {
		t.Fatalf("repeated CreateVolume: %v", err)
	}
	if again.GetVolume().GetVolumeId() != v.GetVolumeId() || ts.Allocated() != 1<<20 {
		t.Errorf("repeated CreateVolume: %v, allocated %d", again.GetVolume(), ts.Allocated())
	}
	// Same name, other directoryMode: incompatible.
	req.Parameters[ParamDirectoryMode] = "0777"
	_, err = ts.controller.CreateVolume(ctx, req)
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("CreateVolume with another directoryMode: %v, want AlreadyExists", err)
	}
}

func TestVolumeSizes(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := testConfig(t)
	cfg.Capacity = 3 << 30
	ts := startServer(t, cfg)
	ctx := testContext(t)

	for i, tc := range []struct {
		r    *csi.CapacityRange
		want int64
	}{
		{nil, DefaultVolumeSize},
		{&csi.CapacityRange{LimitBytes: 5 << 20}, 5 << 20},
		{&csi.CapacityRange{LimitBytes: 2 << 30}, DefaultVolumeSize},
		{&csi.CapacityRange{RequiredBytes: 7, LimitBytes: 7}, 7},
	} {
		req := createRequest(fmt.Sprintf("vol-%d", i))
		req.CapacityRange = tc.r
		resp, err := ts.controller.CreateVolume(ctx, req)
		if err != nil {
			t.Fatalf("range %v: %v", tc.r, err)
		}
		if got := resp.GetVolume().GetCapacityBytes(); got != tc.want {
			t.Errorf("range %v: %d bytes, want %d", tc.r, got, tc.want)
		}
	}
	// 2 GiB + 5 MiB + 7 bytes are taken; 1 GiB does not fit any more.
	_, err := ts.controller.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "vol-big", VolumeCapabilities: []*csi.VolumeCapability{rwo}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("CreateVolume beyond capacity: %v, want ResourceExhausted", err)
	}
	// Deleting frees the space again.
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol-0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.controller.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "vol-big", VolumeCapabilities: []*csi.VolumeCapability{rwo}}); err != nil {
		t.Errorf("CreateVolume after freeing space: %v", err)
	}
}

func TestGetCapacity(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := testConfig(t)
	cfg.Capacity = 10 << 20
	ts := startServer(t, cfg)
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("vol")); err != nil {
		t.Fatal(err)
	}
	free := int64(9 << 20)
	for _, tc := range []struct {
		name string
		req  *csi.GetCapacityRequest
		want int64
	}{
		{"whole node", &csi.GetCapacityRequest{}, free},
		{"this node's segment", &csi.GetCapacityRequest{
			AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKey: "node-1"}}}, free},
		{"another node's segment", &csi.GetCapacityRequest{
			AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKey: "node-2"}}}, 0},
		{"supported capability", &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{
			mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)}}, free},
		{"multi-node capability", &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{
			mountCapability(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}}, 0},
		{"StorageClass parameters", &csi.GetCapacityRequest{Parameters: map[string]string{ParamDirectoryMode: "0700"}}, free},
	} {
		resp, err := ts.controller.GetCapacity(ctx, tc.req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if resp.GetAvailableCapacity() != tc.want || resp.GetMaximumVolumeSize().GetValue() != tc.want {
			t.Errorf("%s: available %d, maximum %v; want %d", tc.name, resp.GetAvailableCapacity(), resp.GetMaximumVolumeSize(), tc.want)
		}
	}
	_, err := ts.controller.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"bogus": "1"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("GetCapacity with unknown parameter: %v, want InvalidArgument", err)
	}
}

// Whoever publishes the node's free capacity hears of every create, growth
// and delete that went through, and of no refusal, and which of them
// shrank the room.
func TestVolumesChanged(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := testConfig(t)
	cfg.Capacity = 2 << 20
	var calls, less atomic.Int32
	cfg.VolumesChanged = func(shrank bool) {
		calls.Add(1)
		if shrank {
			less.Add(1)
		}
	}
	ts := startServer(t, cfg)
	ctx := testContext(t)
	tooBig := createRequest("big")
	tooBig.CapacityRange.RequiredBytes = 4 << 20
	for _, step := range []struct {
		name string
		call func() error
		code codes.Code
		// want calls, of which less said the room shrank.
		want, less int32
	}{
		{"create", func() error { _, err := ts.controller.CreateVolume(ctx, createRequest("vol")); return err }, codes.OK, 1, 1},
		{"create that does not fit", func() error { _, err := ts.controller.CreateVolume(ctx, tooBig); return err }, codes.ResourceExhausted, 1, 1},
		{"growth", func() error {
			_, err := ts.controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
				VolumeId: "vol", CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 20}})
			return err
		}, codes.OK, 2, 2},
		{"delete without ID", func() error {
			_, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{})
			return err
		}, codes.InvalidArgument, 2, 2},
		{"delete", func() error {
			_, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol"})
			return err
		}, codes.OK, 3, 2},
	} {
		if err := step.call(); status.Code(err) != step.code {
			t.Fatalf("%s: %v, want code %s", step.name, err, step.code)
		}
		if got, shrank := calls.Load(), less.Load(); got != step.want || shrank != step.less {
			t.Errorf("after %s: VolumesChanged called %d times, %d saying less room; want %d and %d", step.name, got, shrank, step.want, step.less)
		}
	}
}

func TestListVolumesPages(t *testing.T) {
	testutil.RequireRoot(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	for _, name := range []string{"c", "a", "e", "b", "d"} {
		if _, err := ts.controller.CreateVolume(ctx, createRequest(name)); err != nil {
			t.Fatal(err)
		}
	}
	page := func(token string) ([]string, string) {
		t.Helper()
		resp, err := ts.controller.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatalf("ListVolumes(%q): %v", token, err)
		}
		var ids []string
		for _, e := range resp.GetEntries() {
			ids = append(ids, e.GetVolume().GetVolumeId())
		}
		return ids, resp.GetNextToken()
	}
	ids, next := page("")
	if fmt.Sprint(ids) != "[a b]" || next == "" {
		t.Fatalf("first page %v, next %q", ids, next)
	}
	// A volume deleted and one added before the token neither repeat nor
	// shift the next page.
	if _, err := ts.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.controller.CreateVolume(ctx, createRequest("a0")); err != nil {
		t.Fatal(err)
	}
	ids, next = page(next)
	if fmt.Sprint(ids) != "[c d]" {
		t.Errorf("second page %v, want [c d]", ids)
	}
	ids, next = page(next)
	if fmt.Sprint(ids) != "[e]" || next != "" {
		t.Errorf("last page %v, next %q; want [e] and no token", ids, next)
	}
}

func TestValidateVolumeCapabilities(t *testing.T) {
	testutil.RequireRoot(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	if _, err := ts.controller.CreateVolume(ctx, createRequest("vol")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		caps      []*csi.VolumeCapability
		params    map[string]string
		confirmed bool
	}{
		{"RWOP", []*csi.VolumeCapability{mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)}, nil, true},
		{"same parameters", []*csi.VolumeCapability{rwo}, map[string]string{ParamDirectoryMode: "777"}, true},
		{"RWX", []*csi.VolumeCapability{mountCapability(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}, nil, false},
		{"other directoryMode", []*csi.VolumeCapability{rwo}, map[string]string{ParamDirectoryMode: "0700"}, false},
		{"bind mount options", []*csi.VolumeCapability{withMountFlags(rwo, "nosuid", "nodev", "noexec", "ro")}, nil, true},
		{"file system mount option", []*csi.VolumeCapability{withMountFlags(rwo, "size=1G")}, nil, false},
	} {
		resp, err := ts.controller.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{
			VolumeId: "vol", VolumeCapabilities: tc.caps, Parameters: tc.params})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := resp.GetConfirmed() != nil; got != tc.confirmed {
			t.Errorf("%s: confirmed = %v, want %v (message %q)", tc.name, got, tc.confirmed, resp.GetMessage())
		}
		if !tc.confirmed && resp.GetMessage() == "" {
			t.Errorf("%s: no message says why it is not confirmed", tc.name)
		}
	}
}

// TestBusyVolume checks that an RPC on a volume another RPC is working on
// answers Aborted at once instead of queueing behind it.
func TestBusyVolume(t *testing.T) {
	testutil.RequireRoot(t)
	ts := startServer(t, testConfig(t))
	ctx := testContext(t)
	unlock, err := ts.Driver.controller.locks.lock("vol")
	if err != nil {
		t.Fatal(err)
	}
	_, err = ts.controller.CreateVolume(ctx, createRequest("vol"))
	if status.Code(err) != codes.Aborted {
		t.Errorf("CreateVolume on a busy volume: %v, want Aborted", err)
	}
	_, err = ts.node.NodePublishVolume(ctx, publishRequest("vol", filepath.Join(ts.dir, "t")))
	if status.Code(err) != codes.Aborted {
		t.Errorf("NodePublishVolume on a busy volume: %v, want Aborted", err)
	}
	unlock()
	if _, err := ts.controller.CreateVolume(ctx, createRequest("vol")); err != nil {
		t.Errorf("CreateVolume once the volume is free: %v", err)
	}
}

// TestConcurrentCreates races more creates than fit: exactly as many as
// fit succeed, the rest get ResourceExhausted, and the accounting adds up.
func TestConcurrentCreates(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := testConfig(t)
	cfg.Capacity = 5 << 20
	ts := startServer(t, cfg)
	ctx := testContext(t)
	errs := make(chan error, 12)
	for i := range cap(errs) {
		go func() {
			_, err := ts.controller.CreateVolume(ctx, createRequest(fmt.Sprintf("vol-%d", i)))
			errs <- err
		}()
	}
	created := 0
	for range cap(errs) {
		switch err := <-errs; status.Code(err) {
		case codes.OK:
			created++
		case codes.ResourceExhausted:
		default:
			t.Errorf("CreateVolume: %v", err)
		}
	}
	if created != 5 || ts.Allocated() != 5<<20 || len(ts.Volumes()) != 5 {
		t.Errorf("created %d, allocated %d, %d volumes; want 5 of 1 MiB", created, ts.Allocated(), len(ts.Volumes()))
	}
	if dirs := listDir(t, filepath.Join(ts.dataRoot, volumesDir)); len(dirs) != 5 {
		t.Errorf("volume directories: %v", dirs)
	}
}
