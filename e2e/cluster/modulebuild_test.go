package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestModuleBuildConfig(t *testing.T) {
	valid := ModuleBuildConfig{Name: "e2e", Module: "k8s.io/kubernetes", Version: KubernetesVersion,
		Packages: []string{"k8s.io/kubernetes/test/images/agnhost"}}
	m, err := valid.module()
	if err != nil {
		t.Fatal(err)
	}
	if !m.stagingReplaces {
		t.Error("a helper module of k8s.io/kubernetes must pin the staging modules")
	}
	if got := modulePackages(m); len(got) != 1 || got[0] != valid.Packages[0] {
		t.Errorf("tools.go would import %v, want %v", got, valid.Packages)
	}

	other := valid
	other.Module, other.Version, other.Packages = "github.com/kubernetes-csi/csi-test/v5", "v5.6.0",
		[]string{"github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity"}
	if m, err := other.module(); err != nil || m.stagingReplaces {
		t.Errorf("csi-test helper module: staging replaces %v, err %v; want none, nil", m.stagingReplaces, err)
	}

	for _, tc := range []struct {
		name string
		edit func(*ModuleBuildConfig)
		want string
	}{
		{"cluster's own name", func(c *ModuleBuildConfig) { c.Name = "kubernetes" }, "cluster's own"},
		{"no name", func(c *ModuleBuildConfig) { c.Name = "" }, "required"},
		{"no version", func(c *ModuleBuildConfig) { c.Version = "" }, "required"},
		{"no packages", func(c *ModuleBuildConfig) { c.Packages = nil }, "required"},
	} {
		cfg := valid
		tc.edit(&cfg)
		if _, err := cfg.module(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want one saying %q", tc.name, err, tc.want)
		}
	}
}

func TestRequiredVersion(t *testing.T) {
	gomod := filepath.Join(t.TempDir(), "go.mod")
	data := "module example.com/m\n\ngo 1.26.0\n\nrequire (\n\tgithub.com/kubernetes-csi/csi-test/v5 v5.6.0\n\tk8s.io/api v0.37.2 // indirect\n)\n"
	if err := os.WriteFile(gomod, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if v, err := RequiredVersion(gomod, "github.com/kubernetes-csi/csi-test/v5"); err != nil || v != "v5.6.0" {
		t.Errorf("RequiredVersion = %q, %v; want v5.6.0", v, err)
	}
	if _, err := RequiredVersion(gomod, "example.com/absent"); err == nil || !strings.Contains(err.Error(), "does not require") {
		t.Errorf("a module go.mod does not require gave %v", err)
	}
	// stickyvol's own go.mod pins the csi-test the in-process sanity test uses.
	if v, err := RequiredVersion("../../go.mod", "github.com/kubernetes-csi/csi-test/v5"); err != nil || !strings.HasPrefix(v, "v5.") {
		t.Errorf("stickyvol's go.mod: csi-test %q, %v", v, err)
	}
}
