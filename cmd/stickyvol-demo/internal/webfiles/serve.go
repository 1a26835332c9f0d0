// Package webfiles serves the files of a directory over plain HTTP and copies
// one such file into a local directory: the HTTP part of the example
// StatefulSet, where the replicas copy the primary's data by its stable DNS
// name (web-0.web).
package webfiles

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"k8s.io/klog/v2"
)

// shutdownGrace is how long requests in flight may run once Serve is told to
// stop. It is short because the example pods have a one-second termination
// grace period.
const shutdownGrace = 500 * time.Millisecond

// Handler answers GET and HEAD with the files below root (a directory answers
// with a listing). Names cannot leave root: the file server cleans ".." out of
// the path, and os.Root refuses symbolic links that point outside it.
func Handler(root *os.Root) http.Handler {
	files := http.FileServerFS(root.FS())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "only GET and HEAD are served", http.StatusMethodNotAllowed)
			return
		}
		files.ServeHTTP(w, r)
	})
}

// Serve serves the files below dir on ln until ctx is done, then lets the
// requests in flight finish for a short while and returns nil.
func Serve(ctx context.Context, ln net.Listener, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open the directory to serve: %w", err)
	}
	defer func() { _ = root.Close() }()

	logger := klog.FromContext(ctx)
	srv := &http.Server{Handler: Handler(root), ReadHeaderTimeout: 10 * time.Second}
	// Also ends the shutdown goroutine when srv.Serve fails on its own.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopped := make(chan error, 1)
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
		defer cancel()
		stopped <- srv.Shutdown(shutdownCtx)
	}()

	logger.Info("Serving files", "dir", dir, "address", ln.Addr().String())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	}
	if err := <-stopped; err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shut down: %w", err)
	}
	logger.Info("Stopped serving", "dir", dir)
	return nil
}
