package conformance

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stickyvol/stickyvol/e2e/image"
)

func TestShortHash(t *testing.T) {
	a := shortHash([]byte("ab"), []byte("c"))
	if a == shortHash([]byte("a"), []byte("bc")) {
		t.Error("moving a byte from one input to the next kept the hash")
	}
	if a != shortHash([]byte("ab"), []byte("c")) || len(a) != 12 {
		t.Errorf("shortHash %q: want a stable 12-character hash", a)
	}
}

func TestSpecKeyFollowsFileContents(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "agnhost")
	write := func(content string) {
		if err := os.WriteFile(bin, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	spec := image.Spec{Ref: AgnhostImage, Files: []image.File{{Path: "/agnhost", Source: bin, Mode: 0o755}}}
	key := func() string {
		k, err := specKey(spec)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write("v1")
	k1 := key()
	if key() != k1 {
		t.Error("the same inputs gave another key")
	}
	write("v2")
	if key() == k1 {
		t.Error("a rebuilt agnhost kept the image's cache key: the old image would be loaded")
	}
	spec.Ref = BusyboxImage
	if key() == k1 {
		t.Error("another image name kept the cache key")
	}
	spec.Files[0].Source = filepath.Join(t.TempDir(), "missing")
	if _, err := specKey(spec); err == nil {
		t.Error("a missing source file gave no error")
	}
}

func TestImageFileName(t *testing.T) {
	if got := imageFileName(GlibcDNSTestingImage); got != "glibc-dns-testing-2.1.1" {
		t.Errorf("imageFileName(%s) = %q", GlibcDNSTestingImage, got)
	}
}

func TestE2EArgs(t *testing.T) {
	cfg := E2EConfig{Binary: "/e2e.test", DriverFile: "/src/e2e/conformance/test-driver.yaml", ReportDir: "/r",
		Kubeconfig: "/kc", Kubectl: "/kubectl"}
	args := cfg.args()
	for _, want := range []string{
		"-provider=local", "-storage.testdriver=/src/e2e/conformance/test-driver.yaml",
		"-ginkgo.focus=" + DefaultFocus, "-ginkgo.skip=" + DefaultSkip, "-ginkgo.timeout=2h0m0s",
		"-report-dir=/r", "-kubeconfig=/kc", "-kubectl-path=/kubectl",
	} {
		if !slices.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	cfg.DryRun, cfg.Focus, cfg.Timeout = true, "subPath", time.Minute
	args = cfg.args()
	if !slices.Contains(args, "-ginkgo.dry-run") || !slices.Contains(args, "-ginkgo.focus=subPath") ||
		!slices.Contains(args, "-ginkgo.timeout=1m0s") {
		t.Errorf("dry run args %q", args)
	}
	if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "-kubeconfig") }) {
		t.Errorf("a dry run needs no cluster, but args %q name one", args)
	}
}

// TestDefaultSkipKeepsSnapshots: the default skip leaves out the specs of
// every feature the local cluster lacks, but not the snapshot specs.
func TestDefaultSkipKeepsSnapshots(t *testing.T) {
	skip := regexp.MustCompile(DefaultSkip)
	for _, tag := range []string{"Windows", "SELinux", "VolumeGroupSnapshotDataSource", "VolumeAttributesClass",
		"VolumeSourceXFS", "Volumes", "SnapshotMetadata", "Vol"} {
		name := "External Storage [Driver: hostpath.stickyvol.dev] x [Feature:" + tag + "] y"
		if !skip.MatchString(name) {
			t.Errorf("[Feature:%s] is not skipped", tag)
		}
	}
	for _, spec := range []string{
		"External Storage [Driver: hostpath.stickyvol.dev] [Testpattern: Dynamic Snapshot (delete policy)] snapshottable [Feature:VolumeSnapshotDataSource] volume snapshot controller should check snapshot fields",
		"External Storage [Driver: hostpath.stickyvol.dev] [Testpattern: Dynamic PV (default fs)] provisioning should provision storage with snapshot data source [Feature:VolumeSnapshotDataSource]",
	} {
		if skip.MatchString(spec) {
			t.Errorf("a snapshot spec is skipped: %s", spec)
		}
	}
	restoreSize := "External Storage [Driver: hostpath.stickyvol.dev] [Testpattern: Dynamic PV (default fs)] provisioning should provision correct filesystem size when restoring snapshot to larger size pvc [Feature:VolumeSnapshotDataSource]"
	if !skip.MatchString(restoreSize) {
		t.Errorf("the df-based restore size spec runs on btrfs volumes: %s", restoreSize)
	}
}
