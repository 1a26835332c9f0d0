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
	"path/filepath"
	"sync"
	"time"

	"github.com/stickyvol/stickyvol/internal/grpcsocket"
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
	// Owner only: kubelet, which runs as root, is the one caller.
	lis, err := grpcsocket.Listen(s.cfg.SocketPath, -1)
	if err != nil {
		return fmt.Errorf("registration: %w", err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(klog.NewContext(ctx, logger.WithValues("method", info.FullMethod)), req)
	}))
	registerapi.RegisterRegistrationServer(srv, s)
	logger.Info("Waiting for kubelet to register the driver", "endpoint", s.cfg.Endpoint)
	if err := grpcsocket.Serve(ctx, srv, lis, 5*time.Second); err != nil {
		return fmt.Errorf("registration: serving %s: %w", s.cfg.SocketPath, err)
	}
	return nil
}

// Registered returns nil once kubelet has reported that it registered the
// driver, and an error before that or after a failed attempt: the readiness
// check, where Check is the liveness one.
func (s *Server) Registered() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status == nil {
		return fmt.Errorf("kubelet has not registered driver %s yet", s.cfg.DriverName)
	}
	if !s.status.GetPluginRegistered() {
		return fmt.Errorf("kubelet failed to register driver %s: %s", s.cfg.DriverName, s.status.GetError())
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
