package conformance

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/mod/modfile"

	"github.com/stickyvol/stickyvol/e2e/cluster"
)

// Where the programs come from. The e2e binary and agnhost are built from the
// Kubernetes release the local cluster runs; csi-sanity from the csi-test
// release stickyvol's go.mod pins, the one its in-process sanity test runs.
const (
	kubernetesModule = "k8s.io/kubernetes"
	agnhostPackage   = "k8s.io/kubernetes/test/images/agnhost"
	csiTestModule    = "github.com/kubernetes-csi/csi-test/v5"
	csiSanityPackage = csiTestModule + "/cmd/csi-sanity"
	// e2eMainDir is where the test main goes in its helper module: not at
	// the root, where the module's tools.go package lives.
	e2eMainDir = "storagee2e"
)

//go:embed testmain/main_test.go.txt
var e2eMain []byte

// Binaries holds the absolute paths of the conformance programs.
type Binaries struct {
	// E2E is the slim storage e2e test binary: the framework's suite
	// setup and the External.Storage suites (testmain/main_test.go.txt).
	E2E string
	// Agnhost is the program of the agnhost test image.
	Agnhost string
	// CSISanity is the csi-sanity command line tool.
	CSISanity string
}

// EnsureBinaries returns the conformance programs under cacheDir/bin, named by
// their version (and, for the e2e binary, a hash of its test main), building
// the missing ones one at a time under the cache's build lock. The first
// build of the e2e binary takes minutes; afterwards this only looks at files.
// repoDir is stickyvol's source tree, whose go.mod pins csi-test.
func EnsureBinaries(ctx context.Context, cacheDir, repoDir string, out io.Writer) (*Binaries, error) {
	csiTestVersion, err := requiredVersion(filepath.Join(repoDir, "go.mod"), csiTestModule)
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(cacheDir, "bin")
	k8s := cluster.KubernetesVersion
	bins := &Binaries{
		E2E:       filepath.Join(bin, fmt.Sprintf("e2e-storage-%s-%s.test", k8s, shortHash(e2eMain))),
		Agnhost:   filepath.Join(bin, "agnhost-"+k8s),
		CSISanity: filepath.Join(bin, "csi-sanity-"+csiTestVersion),
	}
	if isExecutable(bins.E2E) && isExecutable(bins.Agnhost) && isExecutable(bins.CSISanity) {
		return bins, nil
	}

	if !isExecutable(bins.E2E) {
		// Binaries of earlier versions or test mains.
		stale, _ := filepath.Glob(filepath.Join(bin, "e2e-storage-*.test"))
		for _, path := range stale {
			os.Remove(path)
		}
	}
	if err := ensureBuilt(ctx, cluster.ModuleBuildConfig{
		CacheDir: cacheDir, Out: out,
		Name: "storage-e2e", Module: kubernetesModule, Version: k8s,
		Packages: []string{"k8s.io/kubernetes/test/e2e", "k8s.io/kubernetes/test/e2e/storage/external", agnhostPackage},
		Files:    map[string][]byte{e2eMainDir + "/main_test.go": e2eMain},
	}, []target{
		{name: "agnhost", pkg: agnhostPackage, dst: bins.Agnhost},
		{name: "storage e2e binary", pkg: "./" + e2eMainDir, dst: bins.E2E, test: true},
	}); err != nil {
		return nil, err
	}
	if err := ensureBuilt(ctx, cluster.ModuleBuildConfig{
		CacheDir: cacheDir, Out: out,
		Name: "csi-sanity", Module: csiTestModule, Version: csiTestVersion,
		Packages: []string{csiSanityPackage},
	}, []target{{name: "csi-sanity", pkg: csiSanityPackage, dst: bins.CSISanity}}); err != nil {
		return nil, err
	}
	return bins, nil
}

// target is one program a helper module builds.
type target struct {
	name, pkg, dst string
	test           bool
}

// ensureBuilt builds the targets that are missing. It prepares the helper
// module only when one is, and looks again once it holds the build lock, in
// case another process built it meanwhile.
func ensureBuilt(ctx context.Context, cfg cluster.ModuleBuildConfig, targets []target) error {
	var missing []target
	for _, t := range targets {
		if !isExecutable(t.dst) {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	mb, err := cluster.NewModuleBuild(ctx, cfg)
	if err != nil {
		return err
	}
	defer mb.Close()
	for _, t := range missing {
		if isExecutable(t.dst) {
			continue
		}
		build := mb.Build
		if t.test {
			build = mb.BuildTest
		}
		if err := build(ctx, t.name, t.pkg, t.dst); err != nil {
			return err
		}
	}
	return nil
}

// requiredVersion returns the version of module that the go.mod at path
// requires.
func requiredVersion(path, module string) (string, error) {
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

func isExecutable(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.Mode().IsRegular() && info.Mode().Perm()&0o111 != 0 && info.Size() > 0
}

// shortHash is a short content hash of a list of inputs, for cache file
// names. Each input is preceded by its length, so that moving bytes from one
// input to the next changes the hash.
func shortHash(inputs ...[]byte) string {
	h := sha256.New()
	for _, in := range inputs {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(in))))
		h.Write(in)
	}
	return hex.EncodeToString(h.Sum(nil)[:6])
}
