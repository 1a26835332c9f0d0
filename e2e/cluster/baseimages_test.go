package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCacheKeyFollowsInput(t *testing.T) {
	a, b := cacheKey([]byte("pause v1")), cacheKey([]byte("pause v2"))
	if a == b || a != cacheKey([]byte("pause v1")) {
		t.Errorf("cacheKey: %s, %s; want stable per input and different across inputs", a, b)
	}
	if len(a) != 12 || strings.ContainsAny(a, "/.") {
		t.Errorf("cacheKey %q is not a short file-name-safe hash", a)
	}
}

func TestCheckStaticRefusesDynamicBinaries(t *testing.T) {
	// /bin/sh is dynamically linked on Debian (dash).
	if err := checkStatic("/bin/sh"); err == nil || !strings.Contains(err.Error(), "busybox-static") {
		t.Errorf("checkStatic(/bin/sh) = %v, want an error that names busybox-static", err)
	}
	notELF := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := checkStatic(notELF); err == nil {
		t.Error("checkStatic accepted a shell script")
	}
}
