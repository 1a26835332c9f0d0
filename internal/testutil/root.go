// Package testutil holds small helpers shared by stickyvol's tests.
package testutil

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// RequireRoot stops the test unless the process runs as root. Outside CI the
// test is skipped with a message that says why; when the environment variable
// CI is true the test fails instead, so CI can never pass by skipping the
// tests that need real mounts.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	stop(tb, "this test needs root (real bind mounts, chown); run it as root, e.g. sudo -E go test")
}

// RequireCommand returns the path of the program name (mkfs.btrfs,
// losetup) and stops the test, as RequireRoot does, when it is not on PATH.
func RequireCommand(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		stop(tb, "this test needs "+name+", which is not on PATH; hack/install-deps.sh installs it")
	}
	return p
}

// stop skips the test with msg, or fails it in CI.
func stop(tb testing.TB, msg string) {
	tb.Helper()
	if InCI() {
		tb.Fatalf("%s: CI=true, so this is a failure, not a skip", msg)
	}
	tb.Skip(msg)
}

// InCI reports whether the environment variable CI holds a true value
// ("true", "1", ...), as CI systems set it.
func InCI() bool {
	ci, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && ci
}
