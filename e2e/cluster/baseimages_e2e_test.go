//go:build e2e

package cluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// testContainerd is a containerd of the test's own (own root, state, socket
// and namespace, CRI plugin off), driven with ctr.
type testContainerd struct {
	t       *testing.T
	address string
}

const testNamespace = "stickyvol-image-test"

func startContainerd(ctx context.Context, t *testing.T) *testContainerd {
	t.Helper()
	// A short directory: the socket path must fit in sun_path.
	dir, err := os.MkdirTemp("", "ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &testContainerd{t: t, address: filepath.Join(dir, "c.sock")}
	config := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n[ttrpc]\n  address = %q\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.address, c.address+".ttrpc")
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Registered after the directory's cleanup, so it runs before it.
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Logf("stopping containerd: %v", err)
		}
		if err := cmd.Wait(); err != nil {
			t.Logf("containerd: %v", err)
		}
		log.Close()
		// The shim keeps runc's state under /run/containerd/runc/<namespace>;
		// the tasks are gone, so it is empty now.
		os.Remove(filepath.Join("/run/containerd/runc", testNamespace))
		// runc leaves the namespace's own cgroup, /<namespace>, empty in
		// every hierarchy; an empty cgroup is removed with rmdir.
		dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", testNamespace))
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup", testNamespace))
		for _, d := range dirs {
			if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("removing the test's cgroup %s: %v", d, err)
			}
		}
		if t.Failed() {
			data, _ := os.ReadFile(log.Name())
			t.Logf("containerd log:\n%s", data)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.ctrErr(ctx, "version"); err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatal("containerd did not answer within 20s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *testContainerd) ctrErr(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.address, "--namespace", testNamespace}, args...)...).CombinedOutput()
	return string(out), err
}

func (c *testContainerd) ctr(ctx context.Context, args ...string) string {
	c.t.Helper()
	out, err := c.ctrErr(ctx, args...)
	if err != nil {
		c.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TestBaseImagesRunInContainerd makes the base images in an empty cache,
// imports them into a containerd of its own and runs them: the names survive
// the import, busybox's applets, modes and users work, pause runs until
// SIGTERM and then exits.
func TestBaseImagesRunInContainerd(t *testing.T) {
	testutil.RequireRoot(t)
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := EnsureOSPackages(ctx, logWriter{t}); err != nil {
		t.Fatal(err)
	}
	cacheDir := t.TempDir()
	tarballs, err := EnsureBaseImages(ctx, cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	again, err := EnsureBaseImages(ctx, cacheDir)
	if err != nil || !slices.Equal(again, tarballs) || time.Since(start) > time.Second {
		t.Errorf("second EnsureBaseImages = %q, %v after %s; want the same tarballs at once", again, err, time.Since(start))
	}

	c := startContainerd(ctx, t)
	for _, tarball := range tarballs {
		c.ctr(ctx, "images", "import", tarball)
	}
	names := strings.Fields(c.ctr(ctx, "images", "ls", "-q"))
	for _, want := range []string{PauseImage, BusyboxImage} {
		if !slices.Contains(names, want) {
			t.Errorf("after import, images are %q; want %s among them", names, want)
		}
	}

	script := `stat -c '%n %a %u' /tmp /root /bin/busybox; readlink /bin/sh; id -u; echo $PATH; readlink /bin/nc`
	out := c.ctr(ctx, "run", "--rm", BusyboxImage, "busybox-check", "sh", "-c", script)
	want := "/tmp 1777 0\n/root 700 0\n/bin/busybox 755 0\nbusybox\n0\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nbusybox\n"
	if out != want {
		t.Errorf("busybox container printed:\n%s\nwant:\n%s", out, want)
	}

	c.ctr(ctx, "run", "-d", PauseImage, "pause-check")
	defer func() {
		if out, err := c.ctrErr(ctx, "containers", "delete", "pause-check"); err != nil {
			t.Logf("ctr containers delete pause-check: %v\n%s", err, out)
		}
	}()
	if out := c.ctr(ctx, "tasks", "ls"); !strings.Contains(out, "RUNNING") {
		t.Fatalf("pause is not running:\n%s", out)
	}
	c.ctr(ctx, "tasks", "kill", "--signal", "SIGTERM", "pause-check")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(c.ctr(ctx, "tasks", "ls"), "STOPPED") {
		if time.Now().After(deadline) {
			t.Fatal("pause did not exit within 10s of SIGTERM")
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.ctr(ctx, "tasks", "delete", "pause-check")
}
