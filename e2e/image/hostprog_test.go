package image

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/stickyvol/stickyvol/internal/testutil"
)

// TestHostProgramsRunAlone copies what HostPrograms gives for mke2fs into
// an empty root and runs it there, as it runs in the agent's image, which
// has no libc of its own.
func TestHostProgramsRunAlone(t *testing.T) {
	mkfs := testutil.RequireCommand(t, "mke2fs")
	files, err := HostPrograms(mkfs)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range files {
		paths = append(paths, f.Path)
	}
	if !slices.ContainsFunc(paths, func(p string) bool { return strings.HasSuffix(p, "/libc.so.6") }) ||
		!slices.ContainsFunc(paths, func(p string) bool { return strings.HasSuffix(p, "/libext2fs.so.2") }) {
		t.Errorf("files for mke2fs: %v, want libc and libext2fs among them", paths)
	}
	testutil.RequireRoot(t)
	root := t.TempDir()
	for _, f := range files {
		data, err := os.ReadFile(f.Source)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(root, f.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, os.FileMode(f.Mode)); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(mkfs, "-V")
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mke2fs -V in a root holding only its files: %v: %s", err, out)
	}
}
