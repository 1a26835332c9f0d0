package webfiles

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"
)

// FetchConfig says what to copy where, and how patiently.
type FetchConfig struct {
	// URL is the file to copy, e.g. http://web-0.web:8080/log.
	URL string
	// Dest is the local file to write. Its directory must exist; the file is
	// replaced whole or not at all.
	Dest string
	// Timeout bounds all attempts together.
	Timeout time.Duration
	// Interval is the pause between attempts.
	Interval time.Duration
	// Client makes the requests; nil means a client whose requests time out
	// after AttemptTimeout.
	Client *http.Client
}

// AttemptTimeout bounds one request of the default client.
const AttemptTimeout = 10 * time.Second

// Fetch copies cfg.URL to cfg.Dest. Every failure is retried until
// cfg.Timeout: when a pod starts, the name of the pod it copies from may not
// resolve yet (that pod is not Ready, or cluster DNS has not caught up), its
// server may not listen yet, or the file may not be written yet.
func Fetch(ctx context.Context, cfg FetchConfig) error {
	client := cfg.Client
	if client == nil {
		client = &http.Client{Timeout: AttemptTimeout}
	}
	logger := klog.FromContext(ctx).WithValues("url", cfg.URL)
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	var lastErr error
	for attempt := 1; ; attempt++ {
		n, err := fetchOnce(ctx, client, cfg.URL, cfg.Dest)
		if err == nil {
			logger.Info("Copied", "dest", cfg.Dest, "bytes", n, "attempts", attempt)
			return nil
		}
		// An attempt cut short by the deadline says less about why the copy
		// failed than the attempt before it.
		if ctx.Err() == nil || lastErr == nil {
			lastErr = err
			logger.Info("Not copied yet, will retry", "attempt", attempt, "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("copy %s to %s: gave up after %d attempts: %w", cfg.URL, cfg.Dest, attempt, lastErr)
		case <-time.After(cfg.Interval):
		}
	}
}

// fetchOnce makes one GET and, on 200 OK, writes the body to dest through a
// temporary file in the same directory that is synced and renamed over dest,
// so dest never holds half a copy.
func fetchOnce(ctx context.Context, client *http.Client, url, dest string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}

	tmp, err := os.CreateTemp(filepath.Dir(dest), "."+filepath.Base(dest)+".*")
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(tmp, resp.Body)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), dest)
	}
	if err != nil {
		return 0, errors.Join(err, os.Remove(tmp.Name()))
	}
	return n, syncDir(filepath.Dir(dest))
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	return errors.Join(err, d.Close())
}
