package conformance

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	storagev1 "k8s.io/api/storage/v1"
	"sigs.k8s.io/yaml"

	"github.com/stickyvol/stickyvol/driver"
)

// driverLoaded is what the e2e binary of Kubernetes v1.37.2 logged for
// testdata/driver.yaml (among more settings).
const driverLoaded = "testdata/driver-loaded.log"

func checkDriverText(t *testing.T, driverYAML string) error {
	t.Helper()
	path := filepath.Join(t.TempDir(), "driver.yaml")
	if err := os.WriteFile(path, []byte(driverYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	log, err := os.Open(driverLoaded)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	return CheckDriverFile(path, log)
}

func TestCheckDriverFile(t *testing.T) {
	good, err := os.ReadFile("testdata/driver.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := checkDriverText(t, string(good)); err != nil {
		t.Fatalf("the file the binary decoded fails the check: %v", err)
	}
	for _, tc := range []struct {
		name, from, to, want string
	}{
		// The decoder matches field names case-sensitively and drops the
		// key: the suites would see no topology keys at all.
		{"lower-case field", "  TopologyKeys:", "  topologyKeys:", "DriverInfo.topologyKeys"},
		{"misplaced field", "StorageClass:\n  FromExistingClassName", "StorageClass:\n  FromExistingClass", "StorageClass.FromExistingClass "},
		// A capability is a map key: decoded as spelt, never asked for.
		{"misspelt capability", "    persistence: true", "    Persistence: true", "DriverInfo.Capabilities.Persistence is not a capability"},
		// A value the binary did not log, e.g. the file changed after the run.
		{"different value", "Max: 1Gi", "Max: 2Gi", "DriverInfo.SupportedSizeRange.Max (Max:2Gi)"},
		// A list of maps: each map's settings are checked.
		{"inline volume attribute", "    size: 16Mi", "    Size: 16Mi", "InlineVolumes[0].Attributes.Size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := strings.Replace(string(good), tc.from, tc.to, 1)
			if text == string(good) {
				t.Fatalf("fixture lacks %q", tc.from)
			}
			err := checkDriverText(t, text)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one naming %q", err, tc.want)
			}
		})
	}
}

func TestCheckDriverFileNeedsTheLogLine(t *testing.T) {
	err := CheckDriverFile("testdata/driver.yaml", strings.NewReader("Running Suite: Kubernetes e2e suite\n"))
	if err == nil || !strings.Contains(err.Error(), "did not log the decoded driver") {
		t.Errorf("err = %v, want one saying the decoded driver was not logged", err)
	}
}

// TestDriverFileMatchesDeployment keeps test-driver.yaml honest about what
// the driver and deploy/base say: a capability declared that the cluster
// does not provide fails specs, and one left out skips them for no reason.
func TestDriverFileMatchesDeployment(t *testing.T) {
	var def struct {
		DriverInfo struct {
			Name         string
			TopologyKeys []string
			Capabilities map[string]bool
		}
		StorageClass  struct{ FromExistingClassName string }
		InlineVolumes []struct{ Attributes map[string]string }
	}
	readYAML(t, "test-driver.yaml", &def)
	var csiDriver storagev1.CSIDriver
	readYAML(t, "../../deploy/base/csidriver.yaml", &csiDriver)
	var class storagev1.StorageClass
	readYAML(t, "../../deploy/base/storageclass.yaml", &class)

	info := def.DriverInfo
	if info.Name != driver.Name || csiDriver.Name != driver.Name {
		t.Errorf("driver names: file %q, CSIDriver %q, driver %q", info.Name, csiDriver.Name, driver.Name)
	}
	if !slices.Equal(info.TopologyKeys, []string{driver.TopologyKey}) {
		t.Errorf("TopologyKeys %v, want [%s], the key NodeGetInfo reports", info.TopologyKeys, driver.TopologyKey)
	}
	publishes := csiDriver.Spec.StorageCapacity != nil && *csiDriver.Spec.StorageCapacity
	if info.Capabilities["capacity"] != publishes {
		t.Errorf("capability capacity=%v, but the CSIDriver's storageCapacity is %v: they go together",
			info.Capabilities["capacity"], publishes)
	}
	fsGroup := csiDriver.Spec.FSGroupPolicy != nil && *csiDriver.Spec.FSGroupPolicy != storagev1.NoneFSGroupPolicy
	if info.Capabilities["fsGroup"] != fsGroup {
		t.Errorf("capability fsGroup=%v, but the CSIDriver's fsGroupPolicy is %v", info.Capabilities["fsGroup"], csiDriver.Spec.FSGroupPolicy)
	}
	ephemeral := slices.Contains(csiDriver.Spec.VolumeLifecycleModes, storagev1.VolumeLifecycleEphemeral)
	if (len(def.InlineVolumes) > 0) != ephemeral {
		t.Errorf("%d inline volumes declared, but the CSIDriver's volumeLifecycleModes are %v: they go together",
			len(def.InlineVolumes), csiDriver.Spec.VolumeLifecycleModes)
	}
	// What the issue requires stickyvol to pass.
	for _, c := range []string{"persistence", "exec", "multipods", "singleNodeVolume", "topology", "fsGroup", "readWriteOncePod"} {
		if !info.Capabilities[c] {
			t.Errorf("capability %s is not declared", c)
		}
	}
	if def.StorageClass.FromExistingClassName != class.Name || class.Provisioner != driver.Name {
		t.Errorf("StorageClass.FromExistingClassName %q; deploy/base installs class %q of provisioner %q",
			def.StorageClass.FromExistingClassName, class.Name, class.Provisioner)
	}
}

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
