//go:build e2e

package conformance

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"k8s.io/klog/v2/ktesting"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/framework"
)

// These tests need no cluster: `make conformance` is the run against one.
// They build the conformance programs into the cache the first time
// (minutes), then take seconds.

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func ensureBinaries(t *testing.T) (context.Context, string, *Binaries) {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	repo, err := framework.RepoDir(".")
	if err != nil {
		t.Fatal(err)
	}
	bins, err := EnsureBinaries(ctx, cluster.DefaultCacheDir(), repo, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	return ctx, repo, bins
}

// TestDryRunSelectsTheDeclaredSuites lists the specs `make conformance`
// runs. RunE2E fails if the binary dropped a setting of test-driver.yaml;
// each suite of a declared capability must contribute specs.
func TestDryRunSelectsTheDeclaredSuites(t *testing.T) {
	ctx, repo, bins := ensureBinaries(t)
	report, err := RunE2E(ctx, E2EConfig{
		Binary: bins.E2E, DriverFile: filepath.Join(repo, DriverFile), ReportDir: t.TempDir(), DryRun: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	bySuite := map[string]int{}
	for _, s := range report.Specs {
		bySuite[s.Suite]++
	}
	t.Logf("%d specs selected: %v", len(report.Specs), bySuite)
	for _, suite := range []string{
		"provisioning", "volumes", "subPath", "volumeMode", "ephemeral", // persistence, exec
		"topology",            // topology, with delayed and immediate binding
		"fsgroupchangepolicy", // fsGroup
		"read-write-once-pod", // readWriteOncePod
	} {
		if bySuite[suite] == 0 {
			t.Errorf("no spec of the %s suite selected", suite)
		}
	}
	if len(report.Setup) > 0 {
		t.Errorf("suite setup failed in a dry run: %+v", report.Setup)
	}
}

// TestImagesHaveUpstreamNames checks the image names against the manifest
// of the Kubernetes release the e2e binary is built from: a name that does
// not match makes pods wait for a pull that never succeeds.
func TestImagesHaveUpstreamNames(t *testing.T) {
	ctx, _, bins := ensureBinaries(t)
	out, err := exec.CommandContext(ctx, "go", "mod", "download", "-json", kubernetesModule+"@"+cluster.KubernetesVersion).Output()
	if err != nil {
		t.Fatalf("locating %s: %v", kubernetesModule, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil {
		t.Fatal(err)
	}
	manifest, err := os.ReadFile(filepath.Join(mod.Dir, "test/utils/image/manifest.go"))
	if err != nil {
		t.Fatal(err)
	}
	for id, ref := range map[string]string{
		"BusyBox": BusyboxImage, "Agnhost": AgnhostImage, "Nginx": NginxImage, "GlibcDnsTesting": GlibcDNSTestingImage,
	} {
		re := regexp.MustCompile(`configs\[` + id + `\] = Config\{list\.PromoterE2eRegistry, "([^"]+)", "([^"]+)"\}`)
		m := re.FindSubmatch(manifest)
		if m == nil {
			t.Errorf("no %s in %s's image manifest", id, cluster.KubernetesVersion)
			continue
		}
		if want := "registry.k8s.io/e2e-test-images/" + string(m[1]) + ":" + string(m[2]); ref != want {
			t.Errorf("%s is %s, but Kubernetes %s asks for %s", id, ref, cluster.KubernetesVersion, want)
		}
	}

	cache := t.TempDir()
	images, err := EnsureImages(ctx, cache, bins.Agnhost)
	if err != nil {
		t.Fatal(err)
	}
	made := map[string]os.FileInfo{}
	for _, img := range images {
		info, err := os.Stat(img.Tarball)
		if err != nil {
			t.Fatal(err)
		}
		made[img.Tarball] = info
		t.Logf("%s: %s (%d MB)", img.Ref, img.Tarball, info.Size()>>20)
	}
	again, err := EnsureImages(ctx, cache, bins.Agnhost)
	if err != nil {
		t.Fatal(err)
	}
	for i, img := range again {
		info, err := os.Stat(img.Tarball)
		if err != nil || img != images[i] || !info.ModTime().Equal(made[img.Tarball].ModTime()) {
			t.Errorf("a second call made %+v again (%v), though nothing changed", img, err)
		}
	}
}
