// Package grpcsocket serves gRPC on a unix socket the way a node plugin must:
// the socket appears with its final permissions, a socket left by a dead
// process is replaced while one another process still serves is not, and the
// socket is gone when serving stops (kubelet reads a missing socket as "the
// plugin is gone"). The CSI driver and the kubelet registration use it.
package grpcsocket

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
)

// Listen creates the unix socket path, and its directory if missing, with
// mode 0600, or 0660 owned by group when group >= 0. The socket is created
// under a temporary name, chmod-ed and chown-ed, then renamed into place, so
// it is never reachable with the umask's permissions. Closing the listener
// removes the socket if it is still the one Listen made.
func Listen(path string, group int) (net.Listener, error) {
	// In a DaemonSet the socket's directory lives under the kubelet root
	// mounted from the host; on a fresh node nothing has created it yet.
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("creating socket directory: %w", err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.%d", filepath.Base(path), os.Getpid()))
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("removing leftover socket: %w", err)
	}
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	// The socket is renamed below: Close must not unlink by the old name.
	lis.SetUnlinkOnClose(false)
	if err := setPermissions(tmp, group); err != nil {
		return nil, errors.Join(err, lis.Close(), os.Remove(tmp))
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, errors.Join(fmt.Errorf("moving socket into place: %w", err), lis.Close(), os.Remove(tmp))
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, errors.Join(err, lis.Close())
	}
	return &listener{Listener: lis, path: path, made: fi}, nil
}

// Serve serves srv on lis until ctx is done or serving fails. When ctx ends
// it stops taking calls, waits up to stopTimeout for those in flight, cuts
// the rest and returns nil. lis is closed either way.
func Serve(ctx context.Context, srv *grpc.Server, lis net.Listener, stopTimeout time.Duration) error {
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(stopTimeout):
		srv.Stop()
		<-stopped
	}
	// Serve returns nil once stopped, or ErrServerStopped when the stop came
	// before it started: both are the shutdown ctx asked for.
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// listener removes its socket on Close, unless another process has put a
// socket of its own at the path since.
type listener struct {
	net.Listener
	path string
	made os.FileInfo
	once sync.Once
}

func (l *listener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() {
		if now, statErr := os.Stat(l.path); statErr == nil && os.SameFile(l.made, now) {
			_ = os.Remove(l.path)
		}
	})
	return err
}

func setPermissions(path string, group int) error {
	mode := os.FileMode(0o600)
	if group >= 0 {
		mode = 0o660
		if err := os.Chown(path, -1, group); err != nil {
			return fmt.Errorf("giving the socket to group %d: %w", group, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("setting socket mode: %w", err)
	}
	return nil
}

// removeStale removes a socket at path that nobody answers on. Anything
// else at path is left alone and reported.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking socket path: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; not replacing it", path)
	}
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		_ = conn.Close()
		return fmt.Errorf("%s is in use: another process serves it", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	return nil
}
