package driver

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

func TestSocketPermissions(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		group    int
		wantMode os.FileMode
		wantGID  uint32
	}{
		{-1, 0o600, 0},
		{4321, 0o660, 4321},
	} {
		cfg := testConfig(t)
		cfg.SocketGroup = tc.group
		ts := startServer(t, cfg)
		fi, err := os.Stat(ts.socket)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != tc.wantMode || st.Gid != tc.wantGID {
			t.Errorf("group %d: socket %v gid %d, want mode %v gid %d", tc.group, fi.Mode(), st.Gid, tc.wantMode, tc.wantGID)
		}
		ts.stop()
		if _, err := os.Lstat(ts.socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left after Run returned: %v", err)
		}
		if entries := listDir(t, ts.dir); strings.Join(entries, ",") != "data" {
			t.Errorf("files left next to the socket: %v", entries)
		}
	}
}

func TestSocketReplacement(t *testing.T) {
	testutil.RequireRoot(t)
	cfg := testConfig(t)
	sock, _ := socketPath(cfg.Endpoint)

	// A socket left by a driver that died is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	_ = stale.Close()
	ts := startServer(t, cfg)

	// A socket another driver still serves is not taken over.
	other := cfg
	other.DataRoot = filepath.Join(ts.dir, "other")
	d, err := New(other)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Close() }()
	err = d.Run(testContext(t))
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Run on a socket in use: %v, want an error saying so", err)
	}

	// Anything that is not a socket is never removed.
	file := filepath.Join(ts.dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	other.Endpoint = file
	other.DataRoot = filepath.Join(ts.dir, "other2") // the first is d's
	d2, err := New(other)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d2.Close() }()
	if err := d2.Run(testContext(t)); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Run on a regular file: %v", err)
	}
}

func TestSocketPath(t *testing.T) {
	for endpoint, want := range map[string]string{
		"unix:///run/csi.sock": "/run/csi.sock",
		"unix:/run/csi.sock":   "/run/csi.sock",
		"/run/csi.sock":        "/run/csi.sock",
		"/run//csi.sock":       "/run/csi.sock",
		"csi.sock":             "",
		"tcp://127.0.0.1:1":    "",
		"unix://relative.sock": "",
	} {
		got, err := socketPath(endpoint)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("socketPath(%q) = %q, %v; want %q", endpoint, got, err, want)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	good := Config{NodeID: "node-1", DataRoot: filepath.Join(dir, "data"), SocketGroup: -1}
	for _, tc := range []struct {
		change func(*Config)
		msg    string
	}{
		{func(c *Config) { c.NodeID = "" }, "node ID"},
		{func(c *Config) { c.NodeID = strings.Repeat("n", 64) }, "1-63"},
		{func(c *Config) { c.NodeID = "node/1" }, "node ID"},
		{func(c *Config) { c.DataRoot = "" }, "data root"},
		{func(c *Config) { c.DataRoot = "var/lib/stickyvol" }, "data root"},
		{func(c *Config) { c.DataRoot = "/" }, "data root"},
		{func(c *Config) { c.DataRoot = dir + "/x/../data" }, "data root"},
		{func(c *Config) { c.Backend = "zfs" }, `unknown backend "zfs"`},
		{func(c *Config) { c.Capacity = -1 }, "capacity"},
		{func(c *Config) { c.MaxVolumesPerNode = -1 }, "max volumes"},
		{func(c *Config) { c.SocketGroup = -2 }, "socket group"},
		{func(c *Config) { c.Endpoint = "localhost:10000" }, "endpoint"},
	} {
		cfg := good
		tc.change(&cfg)
		d, err := New(cfg)
		if err == nil {
			_ = d.Close()
			t.Errorf("New(%+v) accepted it", cfg)
			continue
		}
		if !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("New(%+v): %q does not mention %q", cfg, err, tc.msg)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused config created the data root: %v", err)
	}
}

// TestInterceptor checks the safety net: a handler error that is not a
// status reaches the client as Internal, status errors pass unchanged.
func TestInterceptor(t *testing.T) {
	intercept := logRequests(klog.FromContext(testContext(t)))
	info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Node/NodePublishVolume"}
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{errors.New("plain"), codes.Internal},
		{status.Error(codes.NotFound, "gone"), codes.NotFound},
	} {
		_, err := intercept(context.Background(), struct{}{}, info, func(context.Context, any) (any, error) {
			return nil, tc.err
		})
		if status.Code(err) != tc.want {
			t.Errorf("handler error %v: got %v, want %v", tc.err, err, tc.want)
		}
	}
}
