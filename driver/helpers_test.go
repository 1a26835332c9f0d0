package driver

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stickyvol/stickyvol/internal/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
)

// testContext returns the test's context with a logger that writes through
// tb.Log at V(2); raise it here to see requests and responses (V(5)).
// Benchmarks log nothing: their output is printed even when they pass.
func testContext(tb testing.TB) context.Context {
	if _, ok := tb.(*testing.B); ok {
		return klog.NewContext(tb.Context(), klog.Logger{})
	}
	logger := ktesting.NewLogger(tb, ktesting.NewConfig(ktesting.Verbosity(2), ktesting.BufferLogs(false)))
	return klog.NewContext(tb.Context(), logger)
}

// testServer is a Driver serving on a unix socket in a temporary directory,
// with clients connected to it.
type testServer struct {
	*Driver
	dir      string // temporary directory holding the socket, data/ and targets
	dataRoot string
	socket   string

	identity   csi.IdentityClient
	controller csi.ControllerClient
	node       csi.NodeClient

	stopOnce sync.Once
	stopFn   func()
}

// testConfig is a Config on a new temporary directory: data root
// <dir>/data, socket <dir>/csi.sock, capacity 100 GiB.
func testConfig(tb testing.TB) Config {
	dir := tb.TempDir()
	unmountUnder(tb, dir)
	return Config{
		NodeID:      "node-1",
		Version:     "test",
		DataRoot:    filepath.Join(dir, "data"),
		Capacity:    100 << 30,
		Endpoint:    "unix://" + filepath.Join(dir, "csi.sock"),
		SocketGroup: -1,
	}
}

// startServer runs New(cfg) and Run on it until the test ends or stop is
// called, and connects clients.
func startServer(tb testing.TB, cfg Config) *testServer {
	tb.Helper()
	d, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	sock, err := socketPath(cfg.Endpoint)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(testContext(tb))
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	ts := &testServer{
		Driver:     d,
		dir:        filepath.Dir(sock),
		dataRoot:   cfg.DataRoot,
		socket:     sock,
		identity:   csi.NewIdentityClient(conn),
		controller: csi.NewControllerClient(conn),
		node:       csi.NewNodeClient(conn),
	}
	ts.stopFn = func() {
		cancel()
		_ = conn.Close()
		if err := <-done; err != nil {
			tb.Errorf("Run: %v", err)
		}
		if err := d.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	}
	tb.Cleanup(ts.stop)
	// The first call waits until Run has the socket in place.
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
	defer pcancel()
	if _, err := ts.identity.Probe(pctx, &csi.ProbeRequest{}, grpc.WaitForReady(true)); err != nil {
		tb.Fatalf("Probe: %v", err)
	}
	return ts
}

// stop stops the server and waits for Run to return. It can be called
// more than once.
func (ts *testServer) stop() { ts.stopOnce.Do(ts.stopFn) }

// unmountUnder makes sure no mount is left under dir when the test ends,
// even when it fails half-way, so the temporary directory can be removed
// and the mounts do not outlive the test. Registered after TempDir, it runs
// before TempDir's removal.
func unmountUnder(tb testing.TB, dir string) {
	tb.Cleanup(func() {
		mounts, err := mountinfo.Read()
		if err != nil {
			tb.Errorf("reading the mount table: %v", err)
			return
		}
		// Deepest first, so stacked and nested mounts come off in order.
		for _, m := range slices.Backward(mounts) {
			if strings.HasPrefix(m.MountPoint, dir+"/") {
				if err := unix.Unmount(m.MountPoint, unix.MNT_DETACH); err != nil {
					tb.Errorf("cleaning up mount %s: %v", m.MountPoint, err)
				}
			}
		}
	})
}

// mountCapability is a mount-access-type capability with the given mode.
func mountCapability(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

var rwo = mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)

// withMountFlags returns a mount capability with c's access mode and flags.
func withMountFlags(c *csi.VolumeCapability, flags ...string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: flags}},
		AccessMode: c.GetAccessMode(),
	}
}

// createRequest is a valid CreateVolumeRequest for name, 1 MiB.
func createRequest(name string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: 1 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{rwo},
	}
}

// publishRequest is a valid NodePublishVolumeRequest.
func publishRequest(id, target string) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: target, VolumeCapability: rwo}
}

// isMounted reports whether target is a mount point of volume id's directory.
func (ts *testServer) isMounted(tb testing.TB, id, target string) bool {
	tb.Helper()
	_, ours, err := NewMounter().Mounted(target, filepath.Join(ts.dataRoot, volumesDir, id))
	if err != nil {
		tb.Fatalf("Mounted(%s): %v", target, err)
	}
	return ours
}
