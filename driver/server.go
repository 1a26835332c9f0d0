package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/internal/grpcsocket"
)

// gracefulStopTimeout bounds how long Serve waits for RPCs in flight when
// its context ends before it cuts them off.
const gracefulStopTimeout = 10 * time.Second

// Run listens on Config.Endpoint and serves until ctx is done, then removes
// the socket. The socket has its final mode from the start (0600, or 0660
// and Config.SocketGroup); a stale socket from an earlier run is replaced,
// one that still answers (another driver serving it) is an error.
func (d *Driver) Run(ctx context.Context) error {
	if d.cfg.Endpoint == "" {
		return errors.New("no endpoint configured")
	}
	p, err := socketPath(d.cfg.Endpoint)
	if err != nil {
		return err
	}
	lis, err := grpcsocket.Listen(p, d.cfg.SocketGroup)
	if err != nil {
		return err
	}
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

	if err := grpcsocket.Serve(ctx, srv, lis, gracefulStopTimeout); err != nil {
		return fmt.Errorf("serving CSI: %w", err)
	}
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
