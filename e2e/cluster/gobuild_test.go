package cluster

import (
	"go/parser"
	"go/token"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/modfile"
)

// fakeKubernetesGoMod has the shape of k8s.io/kubernetes' go.mod: staging
// modules required at v0.0.0 and replaced by ./staging directories, a staging
// module it does not require, and an ordinary replace.
const fakeKubernetesGoMod = `// This is a generated file. Do not edit directly.

module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
	github.com/spf13/cobra v1.10.2
	k8s.io/api v0.0.0
	k8s.io/client-go v0.0.0
	k8s.io/kubelet v0.0.0
)

require k8s.io/apimachinery v0.0.0 // indirect

replace (
	github.com/example/fork => github.com/example/fork v1.2.3
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/apimachinery => ./staging/src/k8s.io/apimachinery
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	k8s.io/kubelet => ./staging/src/k8s.io/kubelet
	k8s.io/sample-controller => ./staging/src/k8s.io/sample-controller
)
`

func TestHelperGoModForKubernetes(t *testing.T) {
	m := goModule{name: "kubernetes", path: "k8s.io/kubernetes", version: "v1.37.2", stagingReplaces: true}
	data, err := helperGoMod(m, []byte(fakeKubernetesGoMod))
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.Parse("go.mod", data, nil)
	if err != nil {
		t.Fatalf("generated go.mod does not parse: %v\n%s", err, data)
	}
	if f.Module.Mod.Path != "stickyvol.local/build/kubernetes" || f.Go == nil || f.Go.Version != "1.26.0" {
		t.Errorf("module %v, go %v; want stickyvol.local/build/kubernetes, go 1.26.0", f.Module.Mod, f.Go)
	}
	if len(f.Godebug) != 1 || f.Godebug[0].Key != "default" || f.Godebug[0].Value != "go1.26" {
		t.Errorf("godebug = %+v, want default=go1.26 carried over", f.Godebug)
	}
	if len(f.Require) != 1 || f.Require[0].Mod.String() != "k8s.io/kubernetes@v1.37.2" {
		t.Errorf("require = %+v, want only k8s.io/kubernetes v1.37.2", f.Require)
	}
	var got []string
	for _, r := range f.Replace {
		got = append(got, r.Old.String()+" => "+r.New.String())
	}
	want := []string{
		"k8s.io/api => k8s.io/api@v0.37.2",
		"k8s.io/apimachinery => k8s.io/apimachinery@v0.37.2",
		"k8s.io/client-go => k8s.io/client-go@v0.37.2",
		"k8s.io/kubelet => k8s.io/kubelet@v0.37.2",
	}
	if !slices.Equal(got, want) {
		t.Errorf("replaces:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestHelperGoModWithoutStaging(t *testing.T) {
	upstream := "module go.etcd.io/etcd/server/v3\n\ngo 1.26.0\n\ntoolchain go1.26.10\n\nrequire go.etcd.io/bbolt v1.4.3\n\nreplace go.etcd.io/etcd/api/v3 => ../api\n"
	data, err := helperGoMod(etcdModule, []byte(upstream))
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.Parse("go.mod", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Replace) != 0 || f.Toolchain != nil {
		t.Errorf("replaces %+v, toolchain %+v: want neither (they only hold in etcd's own repository)", f.Replace, f.Toolchain)
	}
	if len(f.Require) != 1 || f.Require[0].Mod.String() != "go.etcd.io/etcd/server/v3@"+EtcdVersion {
		t.Errorf("require = %+v", f.Require)
	}
}

// The external-snapshotter's own go.mod asks for an older client module and
// replaces it with ./client; the helper module requires the client of the
// same release instead.
func TestHelperGoModRequiresTheSnapshotClientOfItsRelease(t *testing.T) {
	upstream := "module github.com/kubernetes-csi/external-snapshotter/v8\n\ngo 1.26.0\n\n" +
		"require github.com/kubernetes-csi/external-snapshotter/client/v8 v8.6.0\n\n" +
		"replace github.com/kubernetes-csi/external-snapshotter/client/v8 => ./client\n"
	data, err := helperGoMod(snapshotterModule, []byte(upstream))
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.Parse("go.mod", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range f.Require {
		got = append(got, r.Mod.String())
	}
	want := []string{
		"github.com/kubernetes-csi/external-snapshotter/v8@" + SnapshotterVersion,
		"github.com/kubernetes-csi/external-snapshotter/client/v8@" + SnapshotterVersion,
	}
	if !slices.Equal(got, want) || len(f.Replace) != 0 {
		t.Errorf("require %q, replace %+v; want require %q and no replace", got, f.Replace, want)
	}
	if pkgs := modulePackages(snapshotterModule); !slices.Equal(pkgs, []string{snapshotterModule.path + "/cmd/snapshot-controller"}) {
		t.Errorf("tools.go would import %q, want only the snapshot-controller", pkgs)
	}
}

func TestStagingVersion(t *testing.T) {
	for in, want := range map[string]string{"v1.37.2": "v0.37.2", "v1.38.0-rc.1": "v0.38.0-rc.1", "v2.0.0": "", "1.37.2": ""} {
		got, err := stagingVersion(in)
		if got != want || (err != nil) != (want == "") {
			t.Errorf("stagingVersion(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestToolsGoImportsEveryKubernetesCommand(t *testing.T) {
	src := toolsGo(modulePackages(kubernetesModule))
	f, err := parser.ParseFile(token.NewFileSet(), "tools.go", src, parser.ParseComments)
	if err != nil {
		t.Fatalf("tools.go does not parse: %v\n%s", err, src)
	}
	if !strings.HasPrefix(string(src), "//go:build tools\n") {
		t.Errorf("tools.go lacks the tools build constraint:\n%s", src)
	}
	var got []string
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		got = append(got, p)
	}
	want := []string{
		"k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager",
		"k8s.io/kubernetes/cmd/kube-scheduler", "k8s.io/kubernetes/cmd/kubelet",
		"k8s.io/kubernetes/cmd/kube-proxy", "k8s.io/kubernetes/cmd/kubectl",
	}
	if !slices.Equal(got, want) {
		t.Errorf("tools.go imports %q, want %q", got, want)
	}
}

func TestLdflagsStampKubernetesVersion(t *testing.T) {
	b := &Binaries{}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range b.commands() {
		flags := strings.Join(ldflags(c, at), " ")
		isKube := c.mod.path == kubernetesModule.path
		for _, want := range []string{
			"-X k8s.io/component-base/version.gitVersion=" + KubernetesVersion,
			"-X k8s.io/client-go/pkg/version.gitVersion=" + KubernetesVersion,
			"-X k8s.io/component-base/version.gitMajor=1",
			"-X k8s.io/component-base/version.gitMinor=37",
			"-X k8s.io/component-base/version.buildDate=2026-01-02T03:04:05Z",
		} {
			if strings.Contains(flags, want) != isKube {
				t.Errorf("%s: ldflags %q: contains %q = %v, want %v", c.name, flags, want, !isKube, isKube)
			}
		}
		stamped := strings.Contains(flags, "-X main.version="+c.version())
		if wantStamp := c.name == "snapshot-controller"; stamped != wantStamp {
			t.Errorf("%s: ldflags %q: stamps main.version %v, want %v", c.name, flags, stamped, wantStamp)
		}
		if !strings.HasPrefix(flags, "-s -w") {
			t.Errorf("%s: ldflags %q do not strip debug info", c.name, flags)
		}
	}
}
