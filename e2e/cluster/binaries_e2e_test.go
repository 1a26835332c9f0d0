//go:build e2e

package cluster

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"
)

// logWriter sends progress lines to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestEnsureBinaries builds (or finds) every binary in the default cache and
// checks that each one runs and reports the pinned version. On a cold cache
// this takes many minutes; run it with a -timeout of an hour.
func TestEnsureBinaries(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	cacheDir := DefaultCacheDir()
	bins, err := EnsureBinaries(ctx, cacheDir, logWriter{t})
	if err != nil {
		t.Fatal(err)
	}

	k8s := strings.TrimPrefix(KubernetesVersion, "v")
	for path, want := range map[string]string{
		bins.KubeAPIServer:         "Kubernetes v" + k8s,
		bins.KubeControllerManager: "Kubernetes v" + k8s,
		bins.KubeScheduler:         "Kubernetes v" + k8s,
		bins.Kubelet:               "Kubernetes v" + k8s,
		bins.KubeProxy:             "Kubernetes v" + k8s,
		bins.Etcd:                  "etcd Version: " + strings.TrimPrefix(EtcdVersion, "v"),
		bins.CoreDNS:               "CoreDNS-" + strings.TrimPrefix(CoreDNSVersion, "v"),
		bins.Kwok:                  KwokVersion,
		// It prints its path and then the version the build stamped; the
		// path ends in the version too, hence the space.
		bins.SnapshotController: " " + SnapshotterVersion,
	} {
		if !filepath.IsAbs(path) {
			t.Errorf("%s is not an absolute path", path)
		}
		flag := "--version"
		if path == bins.CoreDNS {
			flag = "-version"
		}
		out, err := exec.CommandContext(ctx, path, flag).CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("%s %s: %v, output %q; want it to contain %q", path, flag, err, out, want)
		}
	}

	out, err := exec.CommandContext(ctx, bins.Kubectl, "version", "--client", "-o", "json").Output()
	if err != nil {
		t.Fatalf("kubectl version: %v", err)
	}
	var v struct{ ClientVersion struct{ GitVersion string } }
	if err := json.Unmarshal(out, &v); err != nil || v.ClientVersion.GitVersion != KubernetesVersion {
		t.Errorf("kubectl version --client: %s (%v); want gitVersion %s", out, err, KubernetesVersion)
	}

	for name := range kwokStages.files {
		data, err := os.ReadFile(filepath.Join(bins.KwokStageDir, name))
		if err != nil {
			t.Errorf("kwok stage: %v", err)
			continue
		}
		if want := "name: " + strings.TrimSuffix(name, ".yaml"); !strings.Contains(string(data), "kind: Stage") || !strings.Contains(string(data), want) {
			t.Errorf("%s is not the kwok Stage %q:\n%s", name, want, data)
		}
	}

	for name := range snapshotCRDs.files {
		data, err := os.ReadFile(filepath.Join(bins.SnapshotCRDDir, name))
		if err != nil {
			t.Errorf("snapshot CRD: %v", err)
			continue
		}
		group, plural, _ := strings.Cut(strings.TrimSuffix(name, ".yaml"), "_")
		if want := "name: " + plural + "." + group; !strings.Contains(string(data), "kind: CustomResourceDefinition") ||
			!strings.Contains(string(data), want) {
			t.Errorf("%s is not the CRD %q", name, want)
		}
	}

	start := time.Now()
	again, err := EnsureBinaries(ctx, cacheDir, logWriter{t})
	if err != nil || *again != *bins {
		t.Errorf("second EnsureBinaries = %+v, %v; want the same binaries", again, err)
	}
	took := time.Since(start)
	t.Logf("EnsureBinaries with everything built took %s", took)
	if took > time.Second {
		t.Errorf("EnsureBinaries with everything built took %s; want it instant", took)
	}
}
