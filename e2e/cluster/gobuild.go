package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// goModule is an upstream module whose commands are built at a pinned version.
type goModule struct {
	name    string // directory name in the build cache, e.g. "kubernetes"
	path    string // module path, e.g. "k8s.io/kubernetes"
	version string
	// stagingReplaces is set for k8s.io/kubernetes, whose go.mod points the
	// k8s.io/* staging modules at ./staging directories. Those replaces
	// only hold in its own repository, so a module that requires it must
	// pin each staging module to its published v0.x release itself.
	stagingReplaces bool
	// requires are modules the helper module requires besides m, at
	// versions above those m's own go.mod asks for: a module m replaces with
	// a directory of its repository must be pinned to its release by hand.
	requires []module.Version
	// pkgs are the packages the helper module's tools.go imports; nil: the
	// commands EnsureBinaries builds from this module.
	pkgs []string
	// files are more files of the helper module, by slash-separated path
	// relative to it, written before it is tidied so that their imports
	// are resolved too.
	files map[string][]byte
}

// errNoGo is returned when the Go toolchain is not on PATH.
var errNoGo = errors.New("the go command is not on PATH: the local cluster's binaries are built from the Go module proxy and need the Go toolchain")

// builder runs the go command for EnsureBinaries and EnsureBaseImages.
type builder struct {
	cacheDir string
	goBin    string
	nice     string // nice(1), so builds yield to everything else; "" if absent
	out      io.Writer
	prepared map[string]string // module name -> helper module directory
}

func newBuilder(cacheDir string, out io.Writer) (*builder, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return nil, errNoGo
	}
	nice, _ := exec.LookPath("nice")
	return &builder{cacheDir: cacheDir, goBin: goBin, nice: nice, out: out, prepared: map[string]string{}}, nil
}

// prepareModule writes the helper module <cacheDir>/build/<name>-<version>,
// whose only job is to build m's commands at m's version: a go.mod that
// requires m (plus, for Kubernetes, its staging replaces) and a tools.go that
// imports the commands, then `go mod tidy -e`. It runs once per builder.
func (b *builder) prepareModule(ctx context.Context, m goModule) (string, error) {
	if dir, ok := b.prepared[m.name]; ok {
		return dir, nil
	}
	dir := filepath.Join(b.cacheDir, "build", m.name+"-"+m.version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	fmt.Fprintf(b.out, "preparing the %s %s build module (the first time, this downloads its modules) ...\n", m.name, m.version)
	start := time.Now()
	upstream, err := b.upstreamGoMod(ctx, m)
	if err != nil {
		return "", err
	}
	goMod, err := helperGoMod(m, upstream)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), goMod, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "tools.go"), toolsGo(modulePackages(m)), 0o644); err != nil {
		return "", err
	}
	for name, data := range m.files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return "", err
		}
	}
	// -e: Kubernetes' module graph names test-only modules the proxy does
	// not serve at every version; tidy would stop at the first of them.
	if _, err := b.goCmd(ctx, dir, "mod", "tidy", "-e"); err != nil {
		return "", fmt.Errorf("preparing the %s build module in %s: %w", m.name, dir, err)
	}
	fmt.Fprintf(b.out, "prepared the %s %s build module in %s\n", m.name, m.version, time.Since(start).Round(time.Second))
	b.prepared[m.name] = dir
	return dir, nil
}

// upstreamGoMod downloads m from the module proxy and returns its go.mod.
func (b *builder) upstreamGoMod(ctx context.Context, m goModule) ([]byte, error) {
	// Run where there is no go.mod, so a broken helper module from a
	// killed run cannot get in the way.
	out, err := b.goCmd(ctx, filepath.Join(b.cacheDir, "build"), "mod", "download", "-json", m.path+"@"+m.version)
	var info struct{ GoMod, Error string }
	if jsonErr := json.Unmarshal(out, &info); jsonErr == nil && info.Error != "" {
		return nil, fmt.Errorf("downloading %s@%s: %s", m.path, m.version, info.Error)
	}
	if err != nil {
		return nil, fmt.Errorf("downloading %s@%s: %w", m.path, m.version, err)
	}
	if info.GoMod == "" {
		return nil, fmt.Errorf("downloading %s@%s: go mod download gave no go.mod path", m.path, m.version)
	}
	return os.ReadFile(info.GoMod)
}

// helperGoMod returns the go.mod of the helper module that builds m, given
// m's own go.mod. It takes m's go and godebug lines, so the commands get the
// language version and GODEBUG defaults their own repository builds them with.
func helperGoMod(m goModule, upstream []byte) ([]byte, error) {
	up, err := modfile.Parse(m.path+"@"+m.version+"/go.mod", upstream, nil)
	if err != nil {
		return nil, err
	}
	f := new(modfile.File)
	if err := f.AddModuleStmt("stickyvol.local/build/" + m.name); err != nil {
		return nil, err
	}
	if up.Go != nil {
		if err := f.AddGoStmt(up.Go.Version); err != nil {
			return nil, err
		}
	}
	for _, g := range up.Godebug {
		if err := f.AddGodebug(g.Key, g.Value); err != nil {
			return nil, err
		}
	}
	f.AddNewRequire(m.path, m.version, false)
	for _, r := range m.requires {
		f.AddNewRequire(r.Path, r.Version, false)
	}
	if m.stagingReplaces {
		version, err := stagingVersion(m.version)
		if err != nil {
			return nil, err
		}
		for _, p := range stagingModules(up) {
			if err := f.AddReplace(p, "", p, version); err != nil {
				return nil, err
			}
		}
	}
	return f.Format()
}

// stagingModules returns, sorted, the modules Kubernetes' go.mod both
// requires and replaces with a ./staging directory. Staging modules it does
// not require (k8s.io/sample-cli-plugin, k8s.io/sample-controller) are
// left out: nothing needs them, and their releases are not all on the proxy,
// so a replace pointing at one would be a trap for whoever adds a dependency.
func stagingModules(kubernetes *modfile.File) []string {
	required := map[string]bool{}
	for _, r := range kubernetes.Require {
		required[r.Mod.Path] = true
	}
	var mods []string
	for _, r := range kubernetes.Replace {
		if r.New.Version == "" && strings.HasPrefix(r.New.Path, "./staging/") && required[r.Old.Path] {
			mods = append(mods, r.Old.Path)
		}
	}
	sort.Strings(mods)
	return mods
}

// stagingVersion maps a Kubernetes release to the release of its staging
// modules: v1.37.2 to v0.37.2.
func stagingVersion(kubernetesVersion string) (string, error) {
	if !semver.IsValid(kubernetesVersion) || semver.Major(kubernetesVersion) != "v1" {
		return "", fmt.Errorf("kubernetes version %q: want v1.x.y", kubernetesVersion)
	}
	return "v0." + strings.TrimPrefix(kubernetesVersion, "v1."), nil
}

// modulePackages returns the packages the helper module of m builds: m.pkgs,
// or else those EnsureBinaries builds from m.
func modulePackages(m goModule) []string {
	if m.pkgs != nil {
		return m.pkgs
	}
	var pkgs []string
	for _, c := range (&Binaries{}).commands() {
		if c.mod.name == m.name {
			pkgs = append(pkgs, c.pkg)
		}
	}
	return pkgs
}

// toolsGo returns a Go file that imports the given commands, which makes
// `go mod tidy` resolve everything they need. The tools build tag keeps it
// out of every build: a main package cannot be imported for real.
func toolsGo(pkgs []string) []byte {
	var buf bytes.Buffer
	buf.WriteString("//go:build tools\n\n// Package tools pins the commands this helper module builds.\npackage tools\n\nimport (\n")
	for _, p := range pkgs {
		fmt.Fprintf(&buf, "\t_ %q\n", p)
	}
	buf.WriteString(")\n")
	return buf.Bytes()
}

// goCmd runs the go command in dir and returns its standard output. Builds
// are static (CGO_ENABLED=0) and use the same flags as `make build`, so they
// share the Go build cache with every other build on the machine. When ctx
// ends, the whole process group (go and its compilers) is killed.
func (b *builder) goCmd(ctx context.Context, dir string, args ...string) ([]byte, error) {
	argv := append([]string{b.goBin}, args...)
	if b.nice != "" {
		argv = append([]string{b.nice, "-n", "10"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	klog.FromContext(ctx).V(4).Info("Running go", "dir", dir, "args", args)
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("go %s: %w\n%s", args[0], err, lastLines(stderr.String(), 40))
	}
	return stdout.Bytes(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// lockCache takes an exclusive lock on cacheDir for building, so that two
// processes (two terminals, a test run and `make cache`) never write the same
// helper module at once. The returned func releases it.
func lockCache(ctx context.Context, cacheDir string, out io.Writer) (func(), error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(cacheDir, "build.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for waiting := false; ; {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		if !waiting {
			fmt.Fprintf(out, "waiting for another process building into %s (lock %s) ...\n", cacheDir, path)
			waiting = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
