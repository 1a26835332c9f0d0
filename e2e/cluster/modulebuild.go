package cluster

import (
	"context"
	"fmt"
	"io"
	"os"

	"golang.org/x/mod/modfile"
)

// ModuleBuildConfig says what a ModuleBuild prepares.
type ModuleBuildConfig struct {
	// CacheDir is the cache EnsureBinaries builds into. Default:
	// DefaultCacheDir().
	CacheDir string
	// Module and Version name the upstream module, e.g. k8s.io/kubernetes
	// and KubernetesVersion.
	Module, Version string
	// Name names the helper module, CacheDir/build/<Name>-<Version>. It must
	// differ from the names of the cluster's own helper modules.
	Name string
	// Packages are the packages the helper module builds; its tools.go
	// imports them, so that tidying resolves what they need.
	Packages []string
	// Files are more files of the helper module, by slash-separated path
	// relative to it, such as a test main package. Put Go packages in a
	// subdirectory: the module's root holds tools.go's package.
	Files map[string][]byte
	// Out receives progress lines and build times. Default: io.Discard.
	Out io.Writer
}

// ModuleBuild builds programs and test binaries from an upstream module at a
// pinned version beyond those the cluster runs, such as Kubernetes' e2e test
// binaries. Its helper module is made as the cluster's own: the upstream's go
// and godebug lines and, for k8s.io/kubernetes, each staging module pinned to
// its published release. A ModuleBuild holds the cache's build lock from
// NewModuleBuild to Close, so that builds into one cache run one at a time,
// across processes too.
type ModuleBuild struct {
	b      *builder
	mod    goModule
	unlock func()
}

// NewModuleBuild writes and tidies the helper module. The first time, that
// downloads the module's dependencies; later it takes seconds.
func NewModuleBuild(ctx context.Context, cfg ModuleBuildConfig) (*ModuleBuild, error) {
	mod, err := cfg.module()
	if err != nil {
		return nil, err
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = DefaultCacheDir()
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	unlock, err := lockCache(ctx, cfg.CacheDir, cfg.Out)
	if err != nil {
		return nil, err
	}
	b, err := newBuilder(cfg.CacheDir, cfg.Out)
	if err == nil {
		_, err = b.prepareModule(ctx, mod)
	}
	if err != nil {
		unlock()
		return nil, err
	}
	return &ModuleBuild{b: b, mod: mod, unlock: unlock}, nil
}

func (cfg ModuleBuildConfig) module() (goModule, error) {
	for _, own := range []goModule{kubernetesModule, etcdModule, coreDNSModule, kwokModule, snapshotterModule} {
		if cfg.Name == own.name {
			return goModule{}, fmt.Errorf("helper module name %q is the cluster's own", cfg.Name)
		}
	}
	if cfg.Name == "" || cfg.Module == "" || cfg.Version == "" || len(cfg.Packages) == 0 {
		return goModule{}, fmt.Errorf("helper module %q: name, module (%q), version (%q) and packages are required",
			cfg.Name, cfg.Module, cfg.Version)
	}
	return goModule{
		name:            cfg.Name,
		path:            cfg.Module,
		version:         cfg.Version,
		stagingReplaces: cfg.Module == kubernetesModule.path,
		pkgs:            cfg.Packages,
		files:           cfg.Files,
	}, nil
}

// Build builds the program pkg into dst as EnsureBinaries builds the
// cluster's: static, trimmed, niced, stamped with the release for
// Kubernetes, into a temporary file renamed into place. name labels the
// progress lines.
func (m *ModuleBuild) Build(ctx context.Context, name, pkg, dst string) error {
	return m.b.build(ctx, command{name: name, pkg: pkg, mod: m.mod, dst: &dst})
}

// BuildTest is Build for the test binary of pkg (go test -c); pkg may be a
// relative path such as ./e2e for a package of Files.
func (m *ModuleBuild) BuildTest(ctx context.Context, name, pkg, dst string) error {
	return m.b.build(ctx, command{name: name, pkg: pkg, mod: m.mod, dst: &dst, test: true})
}

// Close releases the build lock.
func (m *ModuleBuild) Close() { m.unlock() }

// BuildTarget is one program EnsureBuilt builds from a helper module.
type BuildTarget struct {
	// Name labels the progress lines.
	Name string
	// Package is the program's import path, or a relative path to a
	// package of ModuleBuildConfig.Files.
	Package string
	// Dst is the binary's path.
	Dst string
	// Test builds the package's test binary (go test -c).
	Test bool
}

// EnsureBuilt builds the targets that are missing. It prepares the helper
// module only when one is, and looks again once it holds the build lock, in
// case another process built it meanwhile.
func EnsureBuilt(ctx context.Context, cfg ModuleBuildConfig, targets []BuildTarget) error {
	var missing []BuildTarget
	for _, t := range targets {
		if !IsExecutable(t.Dst) {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	mb, err := NewModuleBuild(ctx, cfg)
	if err != nil {
		return err
	}
	defer mb.Close()
	for _, t := range missing {
		if IsExecutable(t.Dst) {
			continue
		}
		build := mb.Build
		if t.Test {
			build = mb.BuildTest
		}
		if err := build(ctx, t.Name, t.Package, t.Dst); err != nil {
			return err
		}
	}
	return nil
}

// RequiredVersion returns the version of module that the go.mod at path
// requires: stickyvol's go.mod pins the tools built from the same modules
// its tests import (csi-test, Helm).
func RequiredVersion(path, module string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	f, err := modfile.ParseLax(path, data, nil)
	if err != nil {
		return "", err
	}
	for _, r := range f.Require {
		if r.Mod.Path == module {
			return r.Mod.Version, nil
		}
	}
	return "", fmt.Errorf("%s does not require %s", path, module)
}
