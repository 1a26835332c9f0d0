// Package registration serves kubelet's plugin registration API
// (k8s.io/kubelet/pkg/apis/pluginregistration/v1), which tells kubelet where
// the CSI driver listens. It replaces the node-driver-registrar sidecar.
//
// How kubelet uses it (pkg/kubelet/pluginmanager): a watcher on
// <kubelet-root>/plugins_registry notices the socket (at kubelet start too),
// the reconciler dials it as a plain unix socket with a 10s timeout, calls
// GetInfo with a 1s timeout, checks the type (CSIPlugin), validates the
// versions, then the CSI handler dials Endpoint and calls NodeGetInfo to fill
// the node's CSINode object and topology labels, and finally kubelet calls
// NotifyRegistrationStatus with the outcome. So the CSI socket must already
// be served when this socket appears.
//
// When registration fails, kubelet reports it through
// NotifyRegistrationStatus and, since it forgets failed plugins, tries again
// by itself with exponential backoff. This server therefore keeps serving
// and logs the failure; Check reports it, so a liveness probe on /healthz
// restarts the pod if kubelet never succeeds (also covering older kubelets,
// which only retry when the socket is created anew, as a restart does).
package registration

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// SupportedVersions are the CSI spec versions announced to kubelet.
var SupportedVersions = []string{"1.0.0"}

// SocketPath returns where kubelet looks for the driver's registration
// socket: <kubeletRoot>/plugins_registry/<driverName>-reg.sock.
func SocketPath(kubeletRoot, driverName string) string {
	return filepath.Join(kubeletRoot, "plugins_registry", driverName+"-reg.sock")
}

// Config configures a Server.
type Config struct {
	// DriverName is the CSI driver name kubelet registers.
	DriverName string
	// Endpoint is the path of the CSI socket as kubelet sees it.
	Endpoint string
	// SocketPath is where to serve the registration API, see SocketPath.
	SocketPath string
}

// Server serves the registration API for one driver.
type Server struct {
	registerapi.UnimplementedRegistrationServer

	cfg Config

	mu     sync.Mutex
	status *registerapi.RegistrationStatus // last one kubelet sent; nil before
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.DriverName == "" || cfg.SocketPath == "" {
		return nil, errors.New("registration: driver name and socket path are required")
	}
	if !filepath.IsAbs(cfg.Endpoint) {
		return nil, fmt.Errorf("registration: CSI endpoint %q must be an absolute path", cfg.Endpoint)
	}
	return &Server{cfg: cfg}, nil
}

// Run serves the registration socket until ctx is done. A stale socket left
// by an earlier process is removed first, and the socket is removed on
// return, which tells kubelet that the driver is gone.
func (s *Server) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithValues("socket", s.cfg.SocketPath)
	lis, err := listen(s.cfg.SocketPath)
	if err != nil {
		return err
	}
	defer removeSocket(logger, s.cfg.SocketPath)

	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(klog.NewContext(ctx, logger.WithValues("method", info.FullMethod)), req)
	}))
	registerapi.RegisterRegistrationServer(srv, s)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		gracefulStop(srv, 5*time.Second)
	}()

	logger.Info("Waiting for kubelet to register the driver", "endpoint", s.cfg.Endpoint)
	err = srv.Serve(lis)
	<-stopped
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("registration: serving %s: %w", s.cfg.SocketPath, err)
	}
	return nil
}

// GetInfo tells kubelet what plugin this is and where its CSI socket is.
func (s *Server) GetInfo(ctx context.Context, _ *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	klog.FromContext(ctx).V(4).Info("Kubelet asked for plugin info")
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.cfg.DriverName,
		Endpoint:          s.cfg.Endpoint,
		SupportedVersions: SupportedVersions,
	}, nil
}

// NotifyRegistrationStatus records kubelet's verdict.
func (s *Server) NotifyRegistrationStatus(ctx context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	logger := klog.FromContext(ctx)
	if st.GetPluginRegistered() {
		logger.Info("Kubelet registered the driver", "driver", s.cfg.DriverName)
	} else {
		logger.Error(errors.New(st.GetError()), "Kubelet failed to register the driver; it retries by itself",
			"driver", s.cfg.DriverName)
	}
	s.mu.Lock()
	s.status = st
	s.mu.Unlock()
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Check returns an error while the last registration attempt kubelet
// reported failed. Before kubelet reported anything it returns nil: kubelet
// may simply not have noticed the socket yet.
func (s *Server) Check() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status == nil || s.status.GetPluginRegistered() {
		return nil
	}
	return fmt.Errorf("kubelet failed to register driver %s: %s", s.cfg.DriverName, s.status.GetError())
}

// listen removes a stale socket at path and listens there with mode 0600;
// only kubelet (root) needs to connect.
func listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("registration: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("registration: %s exists and is not a socket; refusing to remove it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("registration: removing stale socket: %w", err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("registration: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("registration: %w", err)
	}
	return lis, nil
}

// removeSocket removes the socket if it is still there (the listener
// normally unlinks it on close).
func removeSocket(logger klog.Logger, path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		logger.Error(err, "Removing the registration socket")
	}
}

// gracefulStop waits up to timeout for calls in flight, then cuts them.
func gracefulStop(srv *grpc.Server, timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		srv.Stop()
	}
}
