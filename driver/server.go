package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// gracefulStopTimeout bounds how long Serve waits for RPCs in flight when
// its context ends before it cuts them off.
const gracefulStopTimeout = 10 * time.Second

// Run listens on Config.Endpoint and serves until ctx is done, then removes
// the socket. The socket appears with its final mode and owner (0600, or
// 0660 and Config.SocketGroup): it is created under a temporary name,
// chmod-ed and chown-ed, then renamed into place, so there is no moment
// when it is reachable with the process umask's permissions. A stale
// socket from an earlier run is replaced; a socket that still answers
// (another driver serving it) is an error.
func (d *Driver) Run(ctx context.Context) error {
	if d.cfg.Endpoint == "" {
		return errors.New("no endpoint configured")
	}
	p, err := socketPath(d.cfg.Endpoint)
	if err != nil {
		return err
	}
	lis, err := listen(p, d.cfg.SocketGroup)
	if err != nil {
		return err
	}
	st, statErr := os.Stat(p)
	defer func() {
		// Remove the socket only if it is still this one.
		if now, err := os.Stat(p); statErr == nil && err == nil && os.SameFile(st, now) {
			_ = os.Remove(p)
		}
	}()
	klog.FromContext(ctx).Info("Serving CSI", "endpoint", p, "driver", d.cfg.Name, "node", d.cfg.NodeID)
	return d.Serve(ctx, lis)
}

// Serve serves the CSI services on lis until ctx is done; it then stops
// taking requests, waits up to gracefulStopTimeout for those in flight and
// returns nil. RPCs log to ctx's logger, with the method added.
func (d *Driver) Serve(ctx context.Context, lis net.Listener) error {
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(logRequests(klog.FromContext(ctx))))
	csi.RegisterIdentityServer(srv, d.identity)
	csi.RegisterControllerServer(srv, d.controller)
	csi.RegisterNodeServer(srv, d.node)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	select {
	case err := <-served:
		return fmt.Errorf("serving CSI: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(gracefulStopTimeout):
		srv.Stop()
		<-stopped
	}
	<-served
	return nil
}

// socketPath turns an endpoint ("unix:///p", "unix:/p" or "/p") into an
// absolute socket path.
func socketPath(endpoint string) (string, error) {
	p := endpoint
	if rest, ok := strings.CutPrefix(endpoint, "unix://"); ok {
		p = rest
	} else if rest, ok := strings.CutPrefix(endpoint, "unix:"); ok {
		p = rest
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("endpoint %q must be a unix socket path, unix:///path or /path", endpoint)
	}
	return filepath.Clean(p), nil
}

// listen creates the socket at p with its final permissions.
func listen(p string, group int) (net.Listener, error) {
	// In a DaemonSet the socket's directory lives under the kubelet root
	// mounted from the host; on a fresh node nothing has created it yet.
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		return nil, fmt.Errorf("creating socket directory: %w", err)
	}
	if err := removeStaleSocket(p); err != nil {
		return nil, err
	}
	tmp := filepath.Join(filepath.Dir(p), fmt.Sprintf(".%s.%d", filepath.Base(p), os.Getpid()))
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("removing leftover socket: %w", err)
	}
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	// The socket is renamed below; Close must not unlink by the old name,
	// and Run removes the final one.
	lis.SetUnlinkOnClose(false)
	if err := setSocketPermissions(tmp, group); err != nil {
		return nil, errors.Join(err, lis.Close(), os.Remove(tmp))
	}
	if err := os.Rename(tmp, p); err != nil {
		return nil, errors.Join(fmt.Errorf("moving socket into place: %w", err), lis.Close(), os.Remove(tmp))
	}
	return lis, nil
}

func setSocketPermissions(p string, group int) error {
	mode := os.FileMode(0o600)
	if group >= 0 {
		mode = 0o660
		if err := os.Chown(p, -1, group); err != nil {
			return fmt.Errorf("giving the socket to group %d: %w", group, err)
		}
	}
	if err := os.Chmod(p, mode); err != nil {
		return fmt.Errorf("setting socket mode: %w", err)
	}
	return nil
}

// removeStaleSocket removes a socket at p that nobody answers on. Anything
// else at p is left alone and reported.
func removeStaleSocket(p string) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking socket path: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; not replacing it", p)
	}
	if conn, err := net.DialTimeout("unix", p, time.Second); err == nil {
		_ = conn.Close()
		return fmt.Errorf("%s is in use: another process serves it", p)
	}
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	return nil
}

// logRequests is a unary interceptor that gives each RPC a logger with its
// method, logs requests and responses at V(5) with secrets stripped, and
// logs failures: Internal and Unknown as errors, other codes (the expected
// answers to bad input or busy volumes) at V(2). An error that is not a
// gRPC status, which handlers must not return, becomes Internal.
func logRequests(base klog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		logger := klog.LoggerWithValues(base, "method", info.FullMethod)
		ctx = klog.NewContext(ctx, logger)
		logger.V(5).Info("Request", "request", protosanitizer.StripSecrets(req))
		resp, err := handler(ctx, req)
		if err == nil {
			logger.V(5).Info("Response", "response", protosanitizer.StripSecrets(resp))
			return resp, nil
		}
		st, ok := status.FromError(err)
		if !ok {
			st = status.New(codes.Internal, err.Error())
		}
		switch st.Code() {
		case codes.Internal, codes.Unknown:
			logger.Error(err, "Request failed", "code", st.Code())
		default:
			logger.V(2).Info("Request refused", "code", st.Code(), "message", st.Message())
		}
		return nil, st.Err()
	}
}
