package registration

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2/ktesting"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

const driverName = "hostpath.stickyvol.dev"

// start runs a Server under a temp kubelet root and returns it, its socket
// and a stop function that waits for Run to return.
func start(t *testing.T, root string) (*Server, string, func() error) {
	t.Helper()
	socket := SocketPath(root, driverName)
	srv, err := New(Config{DriverName: driverName, Endpoint: "/var/lib/kubelet/plugins/" + driverName + "/csi.sock", SocketPath: socket})
	if err != nil {
		t.Fatal(err)
	}
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(ctx) }()
	waitForSocket(t, socket, errc)
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			runErr = <-errc
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return srv, socket, stop
}

func waitForSocket(t *testing.T, path string, errc chan error) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		// Connectable, not merely there: a stale socket file is there too.
		if conn, err := net.Dial("unix", path); err == nil {
			_ = conn.Close()
			return
		}
		select {
		case err := <-errc:
			t.Fatalf("Run returned before listening: %v", err)
		default:
		}
	}
	t.Fatalf("socket %s did not appear", path)
}

// dial connects the way kubelet's plugin manager does: a plain unix socket
// path, no TLS.
func dial(t *testing.T, path string) registerapi.RegistrationClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return registerapi.NewRegistrationClient(conn)
}

func TestKubeletRegistrationFlow(t *testing.T) {
	root := t.TempDir()
	srv, socket, stop := start(t, root)

	if socket != filepath.Join(root, "plugins_registry", "hostpath.stickyvol.dev-reg.sock") {
		t.Errorf("socket at %s", socket)
	}
	if fi, _ := os.Stat(socket); fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	client := dial(t, socket)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second) // kubelet's GetInfo timeout
	defer cancel()
	info, err := client.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != driverName ||
		info.Endpoint != "/var/lib/kubelet/plugins/hostpath.stickyvol.dev/csi.sock" ||
		len(info.SupportedVersions) != 1 || info.SupportedVersions[0] != "1.0.0" {
		t.Errorf("GetInfo = %+v", info)
	}

	if err := srv.Check(); err != nil {
		t.Errorf("Check before any verdict: %v", err)
	}
	if err := srv.Registered(); err == nil {
		t.Error("Registered before any verdict: nil, want not yet")
	}
	if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{
		PluginRegistered: false, Error: "NodeGetInfo failed"}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Check(); err == nil || !strings.Contains(err.Error(), "NodeGetInfo failed") {
		t.Errorf("Check after a failed registration = %v, want kubelet's error", err)
	}
	if err := srv.Registered(); err == nil || !strings.Contains(err.Error(), "NodeGetInfo failed") {
		t.Errorf("Registered after a failed registration = %v, want kubelet's error", err)
	}
	if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Check(); err != nil {
		t.Errorf("Check after kubelet's retry succeeded: %v", err)
	}
	if err := srv.Registered(); err != nil {
		t.Errorf("Registered after kubelet's retry succeeded: %v", err)
	}

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Lstat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after shutdown (kubelet would keep the driver registered): %v", err)
	}
}

func TestStaleSocketIsReplaced(t *testing.T) {
	root := t.TempDir()
	socket := SocketPath(root, driverName)
	if err := os.MkdirAll(filepath.Dir(socket), 0o750); err != nil {
		t.Fatal(err)
	}
	// A crashed process leaves its socket file behind.
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	lis.SetUnlinkOnClose(false)
	_ = lis.Close()

	_, socket, stop := start(t, root)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := dial(t, socket).GetInfo(ctx, &registerapi.InfoRequest{}); err != nil {
		t.Fatalf("GetInfo on the new socket: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestRefusesToRemoveNonSocket(t *testing.T) {
	root := t.TempDir()
	socket := SocketPath(root, driverName)
	if err := os.MkdirAll(filepath.Dir(socket), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(socket, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{DriverName: driverName, Endpoint: "/csi.sock", SocketPath: socket})
	if err != nil {
		t.Fatal(err)
	}
	_, ctx := ktesting.NewTestContext(t)
	if err := srv.Run(ctx); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Run = %v, want a refusal", err)
	}
	if data, _ := os.ReadFile(socket); string(data) != "keep me" {
		t.Error("the regular file was touched")
	}
}

func TestNewRejectsRelativeEndpoint(t *testing.T) {
	if _, err := New(Config{DriverName: driverName, SocketPath: "/x.sock", Endpoint: "csi.sock"}); err == nil {
		t.Error("relative endpoint accepted")
	}
}
