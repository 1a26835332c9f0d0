package webfiles

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"
)

// startServer serves dir on a loopback port for the length of the test and
// returns its base URL.
func startServer(t *testing.T, dir string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, dir) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return within 5 s of its context ending")
		}
	})
	return "http://" + ln.Addr().String()
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func testFetch(t *testing.T, cfg FetchConfig) error {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Interval == 0 {
		cfg.Interval = 20 * time.Millisecond
	}
	return Fetch(ctx, cfg)
}

func TestFetchCopiesServedFile(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	want := "web-0: first started on node-a\n" + strings.Repeat("tick\n", 10000)
	writeFile(t, filepath.Join(src, "log"), want)
	base := startServer(t, src)

	dest := filepath.Join(dst, "web-0.log")
	writeFile(t, dest, "an older copy")
	if err := testFetch(t, FetchConfig{URL: base + "/log", Dest: dest}); err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	got, err := os.ReadFile(dest)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("copy has %d bytes, want the %d bytes served", len(got), len(want))
	}
	entries, err := os.ReadDir(dst)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("destination directory holds %v, want only web-0.log (no temporary files)", entries)
	}
}

func TestServeRefusesWhatItShouldNotServe(t *testing.T) {
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "secret"), "not for the network")
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "identity"), "web-0\n")
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(src, "escape")); err != nil {
		t.Fatal(err)
	}
	base := startServer(t, src)

	for _, tc := range []struct {
		name, method, path string
		wantStatus         int // 0: any status but 200
	}{
		{"a file", http.MethodGet, "/identity", http.StatusOK},
		{"HEAD", http.MethodHead, "/identity", http.StatusOK},
		{"missing file", http.MethodGet, "/nothing", http.StatusNotFound},
		{"write", http.MethodPut, "/identity", http.StatusMethodNotAllowed},
		{"dot-dot", http.MethodGet, "/../" + filepath.Base(outside) + "/secret", 0},
		{"symlink out of the directory", http.MethodGet, "/escape", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A raw request line, so the client does not clean "..".
			status, body := rawRequest(t, base, tc.method, tc.path)
			if strings.Contains(body, "not for the network") {
				t.Fatalf("%s %s served a file outside the directory", tc.method, tc.path)
			}
			if tc.wantStatus == 0 {
				if status == http.StatusOK {
					t.Errorf("%s %s: status 200, want an error", tc.method, tc.path)
				}
				return
			}
			if status != tc.wantStatus {
				t.Errorf("%s %s: status %d, want %d", tc.method, tc.path, status, tc.wantStatus)
			}
		})
	}
}

func rawRequest(t *testing.T, base, method, path string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	if _, err := io.WriteString(conn, method+" "+path+" HTTP/1.0\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func TestFetchWaitsForTheFileToAppear(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	base := startServer(t, src)
	go func() {
		time.Sleep(200 * time.Millisecond)
		writeFile(t, filepath.Join(src, "identity"), "web-0\n")
	}()
	dest := filepath.Join(dst, "identity")
	if err := testFetch(t, FetchConfig{URL: base + "/identity", Dest: dest}); err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if got, _ := os.ReadFile(dest); string(got) != "web-0\n" {
		t.Errorf("copy holds %q, want %q", got, "web-0\n")
	}
}

// A replica starts while the primary's DNS name does not resolve yet: Fetch
// keeps trying and succeeds once it does.
func TestFetchRetriesUntilTheNameResolves(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(src, "log"), "tick\n")
	base := startServer(t, src)
	addr := strings.TrimPrefix(base, "http://")

	var dials atomic.Int32
	var dialer net.Dialer
	transport := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			if dials.Add(1) <= 3 {
				return nil, &net.DNSError{Err: "no such host", Name: "web-0.web", IsNotFound: true}
			}
			return dialer.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(transport.CloseIdleConnections)
	dest := filepath.Join(dst, "log")
	err := testFetch(t, FetchConfig{
		URL:    "http://web-0.web:8080/log",
		Dest:   dest,
		Client: &http.Client{Transport: transport},
	})
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if n := dials.Load(); n != 4 {
		t.Errorf("Fetch dialed %d times, want 3 failed lookups and 1 success", n)
	}
	if got, _ := os.ReadFile(dest); string(got) != "tick\n" {
		t.Errorf("copy holds %q, want %q", got, "tick\n")
	}
}

func TestFetchGivesUpWithTheReason(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	base := startServer(t, src)
	dest := filepath.Join(dst, "log")

	start := time.Now()
	err := testFetch(t, FetchConfig{URL: base + "/log", Dest: dest, Timeout: 300 * time.Millisecond})
	if err == nil {
		t.Fatal("Fetch of a file that never appears succeeded")
	}
	if !strings.Contains(err.Error(), "404 Not Found") || !strings.Contains(err.Error(), base+"/log") {
		t.Errorf("error %q does not name the URL and the last status", err)
	}
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Errorf("Fetch took %v to give up, want about its 300ms timeout", elapsed)
	}
	if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("destination exists after a failed copy (stat: %v)", err)
	}
}
