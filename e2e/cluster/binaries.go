package cluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/module"
	"k8s.io/klog/v2"
)

// Versions of the programs the cluster runs, built from the Go module proxy.
// Kubernetes stays on 1.37 while nodes run Debian 12's containerd 1.6: that
// containerd lacks the CRI RuntimeConfig call, which kubelet 1.37 still
// tolerates and 1.38 will not.
const (
	KubernetesVersion = "v1.37.2"
	EtcdVersion       = "v3.6.16"
	CoreDNSVersion    = "v1.15.0"
	KwokVersion       = "v0.8.0"
	// SnapshotterVersion is the release of the external-snapshotter whose
	// snapshot-controller the cluster runs and whose CRDs it installs.
	SnapshotterVersion = "v8.7.0"
)

// Binaries holds the absolute paths of the cluster's programs.
type Binaries struct {
	Etcd, KubeAPIServer, KubeControllerManager, KubeScheduler, Kubelet, KubeProxy, Kubectl, CoreDNS, Kwok string
	// SnapshotController makes a VolumeSnapshotContent for each
	// VolumeSnapshot, for the driver's agents to take.
	SnapshotController string
	// SnapshotCRDDir holds the CustomResourceDefinitions of the snapshot
	// APIs the snapshot-controller serves, from the external-snapshotter's
	// client module: VolumeSnapshot, VolumeSnapshotContent and
	// VolumeSnapshotClass, and their VolumeGroupSnapshot counterparts (one
	// YAML file each).
	SnapshotCRDDir string
	// KwokStageDir holds the kwok Stage configs the fake nodes and their
	// pods go through: node-initialize, node-heartbeat-with-lease,
	// pod-ready, pod-complete and pod-delete (one YAML file each).
	KwokStageDir string
}

// DefaultCacheDir is where binaries, images and the cluster live unless told
// otherwise: $HOME/.cache/stickyvol, or a directory under the system's
// temporary directory when there is no home.
func DefaultCacheDir() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "stickyvol-cache")
	}
	return filepath.Join(home, ".cache", "stickyvol")
}

// Prepare makes everything a cluster needs before it starts: the OS
// packages, the binaries and the base images (in that order: the busybox
// image is made from an OS package), and returns the binaries and the base
// images' tarballs. out receives progress lines.
func Prepare(ctx context.Context, cacheDir string, out io.Writer) (*Binaries, []string, error) {
	if err := EnsureOSPackages(ctx, out); err != nil {
		return nil, nil, err
	}
	bins, err := EnsureBinaries(ctx, cacheDir, out)
	if err != nil {
		return nil, nil, err
	}
	images, err := EnsureBaseImages(ctx, cacheDir)
	if err != nil {
		return nil, nil, err
	}
	return bins, images, nil
}

// Upstream modules the commands come from. Each is built in a helper module
// of its own (see prepareModule).
var (
	kubernetesModule = goModule{name: "kubernetes", path: "k8s.io/kubernetes", version: KubernetesVersion, stagingReplaces: true}
	etcdModule       = goModule{name: "etcd", path: "go.etcd.io/etcd/server/v3", version: EtcdVersion}
	coreDNSModule    = goModule{name: "coredns", path: "github.com/coredns/coredns", version: CoreDNSVersion}
	kwokModule       = goModule{name: "kwok", path: "sigs.k8s.io/kwok", version: KwokVersion}
	// The external-snapshotter's go.mod points its client module at
	// ./client, a replace that only holds in its own repository, and
	// requires an older client release: the helper module requires the
	// client of the same release, which is also where the CRDs come from.
	snapshotterModule = goModule{
		name: "external-snapshotter", path: "github.com/kubernetes-csi/external-snapshotter/v8", version: SnapshotterVersion,
		requires: []module.Version{{Path: snapshotClientModule, Version: SnapshotterVersion}},
	}
)

// snapshotClientModule holds the snapshot APIs' Go types and their CRDs.
const snapshotClientModule = "github.com/kubernetes-csi/external-snapshotter/client/v8"

// command is one program built from a module, and the Binaries field that
// receives its path.
type command struct {
	name string
	pkg  string
	mod  goModule
	dst  *string
	test bool // a test binary of pkg (go test -c)
	// versionVar is the package variable, such as main.version, that the
	// program reports its version from; the build sets it to the module's
	// version.
	versionVar string
}

func (c command) version() string { return c.mod.version }

// commands lists what EnsureBinaries builds, in build order: the small ones
// first, so a first run shows progress early.
func (b *Binaries) commands() []command {
	k8s := func(name string, dst *string) command {
		return command{name: name, pkg: "k8s.io/kubernetes/cmd/" + name, mod: kubernetesModule, dst: dst}
	}
	return []command{
		{name: "etcd", pkg: "go.etcd.io/etcd/server/v3", mod: etcdModule, dst: &b.Etcd},
		{name: "kwok", pkg: "sigs.k8s.io/kwok/cmd/kwok", mod: kwokModule, dst: &b.Kwok},
		{name: "coredns", pkg: "github.com/coredns/coredns", mod: coreDNSModule, dst: &b.CoreDNS},
		k8s("kube-apiserver", &b.KubeAPIServer),
		k8s("kube-controller-manager", &b.KubeControllerManager),
		k8s("kube-scheduler", &b.KubeScheduler),
		k8s("kubelet", &b.Kubelet),
		k8s("kube-proxy", &b.KubeProxy),
		k8s("kubectl", &b.Kubectl),
		{name: "snapshot-controller", pkg: snapshotterModule.path + "/cmd/snapshot-controller", mod: snapshotterModule,
			dst: &b.SnapshotController, versionVar: "main.version"},
	}
}

// moduleFiles are files EnsureBinaries copies out of a module in the module
// cache into a directory of the cache: files maps each file's name there to
// its path in the module.
type moduleFiles struct {
	// from is the helper module whose download brings the module.
	from goModule
	// module is the module's path; its version is the one from resolves.
	module string
	files  map[string]string
}

// kwokStages are the Stage configs the fake nodes and their pods go
// through. kwok's "fast" stages move pods straight to Ready and nodes
// straight to Ready, with node heartbeats through Leases like a kubelet.
// `kwok` itself does not embed them (kwokctl does).
var kwokStages = moduleFiles{from: kwokModule, module: kwokModule.path, files: map[string]string{
	"node-initialize.yaml":           "kustomize/stage/node/fast/node-initialize.yaml",
	"node-heartbeat-with-lease.yaml": "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
	"pod-ready.yaml":                 "kustomize/stage/pod/fast/pod-ready.yaml",
	"pod-complete.yaml":              "kustomize/stage/pod/fast/pod-complete.yaml",
	"pod-delete.yaml":                "kustomize/stage/pod/fast/pod-delete.yaml",
}}

// snapshotCRDs are the CustomResourceDefinitions of the snapshot APIs, all
// of them: snapshot-controller v8.7 serves the group snapshot APIs by
// default (its CSIVolumeGroupSnapshot gate is GA) and only logs a warning
// without their CRDs.
var snapshotCRDs = moduleFiles{from: snapshotterModule, module: snapshotClientModule, files: crdFiles(
	"snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
	"snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
	"snapshot.storage.k8s.io_volumesnapshots.yaml",
	"groupsnapshot.storage.k8s.io_volumegroupsnapshotclasses.yaml",
	"groupsnapshot.storage.k8s.io_volumegroupsnapshotcontents.yaml",
	"groupsnapshot.storage.k8s.io_volumegroupsnapshots.yaml",
)}

// crdFiles maps each CRD file of the client module's config/crd/ to itself.
func crdFiles(names ...string) map[string]string {
	files := map[string]string{}
	for _, n := range names {
		files[n] = "config/crd/" + n
	}
	return files
}

// EnsureBinaries returns the cluster's programs under cacheDir/bin, named
// <name>-<version>, building those that are missing from the Go module proxy
// one at a time, and the files it needs from their modules under
// cacheDir/share. Progress and build times go to out. With everything built it
// only looks at the files, so it returns at once; a cold build of Kubernetes
// takes many minutes and a few GB of Go build cache.
func EnsureBinaries(ctx context.Context, cacheDir string, out io.Writer) (*Binaries, error) {
	bins := &Binaries{
		KwokStageDir:   filepath.Join(cacheDir, "share", "kwok-stages-"+KwokVersion),
		SnapshotCRDDir: filepath.Join(cacheDir, "share", "snapshot-crds-"+SnapshotterVersion),
	}
	shares := map[string]moduleFiles{bins.KwokStageDir: kwokStages, bins.SnapshotCRDDir: snapshotCRDs}
	var missing []command
	for _, c := range bins.commands() {
		*c.dst = binaryPath(cacheDir, c.name, c.version())
		if !IsExecutable(*c.dst) {
			missing = append(missing, c)
		}
	}
	missingShares := func() bool {
		for dir, mf := range shares {
			if !mf.present(dir) {
				return true
			}
		}
		return false
	}
	if len(missing) == 0 && !missingShares() {
		return bins, nil
	}

	unlock, err := lockCache(ctx, cacheDir, out)
	if err != nil {
		return nil, err
	}
	defer unlock()
	b, err := newBuilder(cacheDir, out)
	if err != nil {
		return nil, err
	}
	for _, c := range missing {
		// Another process may have built it while this one waited for the lock.
		if IsExecutable(*c.dst) {
			continue
		}
		if err := b.build(ctx, c); err != nil {
			return nil, err
		}
	}
	for dir, mf := range shares {
		if !mf.present(dir) {
			if err := b.copyModuleFiles(ctx, mf, dir); err != nil {
				return nil, err
			}
		}
	}
	klog.FromContext(ctx).V(2).Info("Binaries ready", "cacheDir", cacheDir)
	return bins, nil
}

func binaryPath(cacheDir, name, version string) string {
	return filepath.Join(cacheDir, "bin", name+"-"+version)
}

// IsExecutable tells whether path is a non-empty executable file: a binary
// a build finished (builds write a temporary file and rename it).
func IsExecutable(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.Mode().IsRegular() && info.Mode().Perm()&0o111 != 0 && info.Size() > 0
}

// present tells whether dir holds every file of mf.
func (mf moduleFiles) present(dir string) bool {
	for name := range mf.files {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return false
		}
	}
	return true
}

// build builds one command into a temporary file beside its final path and
// renames it into place, so a killed build never leaves a half binary.
func (b *builder) build(ctx context.Context, c command) error {
	dir, err := b.prepareModule(ctx, c.mod)
	if err != nil {
		return err
	}
	dst := *c.dst
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	removeStale(dst + ".tmp-*")
	tmp := fmt.Sprintf("%s.tmp-%d", dst, os.Getpid())
	defer os.Remove(tmp) // fails harmlessly once renamed

	fmt.Fprintf(b.out, "building %s %s ...\n", c.name, c.version())
	start := time.Now()
	verb := []string{"build"}
	if c.test {
		verb = []string{"test", "-c"}
	}
	args := append(verb, "-trimpath", "-ldflags", strings.Join(ldflags(c, start), " "), "-o", tmp, c.pkg)
	if _, err := b.goCmd(ctx, dir, args...); err != nil {
		return fmt.Errorf("building %s %s: %w", c.name, c.version(), err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	info, err := os.Stat(dst)
	if err != nil {
		return err
	}
	fmt.Fprintf(b.out, "built %s %s in %s (%d MB)\n", c.name, c.version(), time.Since(start).Round(time.Second), info.Size()>>20)
	return nil
}

// ldflags strips debug info and stamps the version into a command's
// versionVar and, for Kubernetes, the way Kubernetes' own build does
// (hack/lib/version.sh sets the same variables in both packages), so
// `kubectl version` and the API server's /version report the release instead
// of v0.0.0-master.
func ldflags(c command, buildTime time.Time) []string {
	flags := []string{"-s", "-w"}
	if c.versionVar != "" {
		flags = append(flags, "-X", c.versionVar+"="+c.mod.version)
	}
	if c.mod.path != kubernetesModule.path {
		return flags
	}
	major, minor, _ := strings.Cut(strings.TrimPrefix(c.mod.version, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	vars := [][2]string{
		{"gitVersion", c.mod.version},
		{"gitMajor", major},
		{"gitMinor", minor},
		{"gitTreeState", "clean"},
		{"buildDate", buildTime.UTC().Format(time.RFC3339)},
	}
	for _, pkg := range []string{"k8s.io/client-go/pkg/version", "k8s.io/component-base/version"} {
		for _, v := range vars {
			flags = append(flags, "-X", pkg+"."+v[0]+"="+v[1])
		}
	}
	return flags
}

// copyModuleFiles copies the files of mf out of the module cache into dst,
// through a temporary directory renamed into place.
func (b *builder) copyModuleFiles(ctx context.Context, mf moduleFiles, dst string) error {
	dir, err := b.prepareModule(ctx, mf.from)
	if err != nil {
		return err
	}
	modDir, err := b.goCmd(ctx, dir, "list", "-m", "-f", "{{.Dir}}", mf.module)
	if err != nil {
		return fmt.Errorf("locating %s in the module cache: %w", mf.module, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dst), filepath.Base(dst)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // fails harmlessly once renamed
	for name, src := range mf.files {
		data, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(modDir)), filepath.FromSlash(src)))
		if err != nil {
			return fmt.Errorf("%s (from the %s %s build module): %w", mf.module, mf.from.name, mf.from.version, err)
		}
		if err := os.WriteFile(filepath.Join(tmp, name), data, 0o644); err != nil {
			return err
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// removeStale removes what a killed earlier build left behind.
func removeStale(pattern string) {
	matches, _ := filepath.Glob(pattern)
	for _, m := range matches {
		os.RemoveAll(m)
	}
}
