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
	csiTestVersion, err := cluster.RequiredVersion(filepath.Join(repoDir, "go.mod"), csiTestModule)
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
	if cluster.IsExecutable(bins.E2E) && cluster.IsExecutable(bins.Agnhost) && cluster.IsExecutable(bins.CSISanity) {
		return bins, nil
	}

	if !cluster.IsExecutable(bins.E2E) {
		// Binaries of earlier versions or test mains.
		stale, _ := filepath.Glob(filepath.Join(bin, "e2e-storage-*.test"))
		for _, path := range stale {
			os.Remove(path)
		}
	}
	if err := cluster.EnsureBuilt(ctx, cluster.ModuleBuildConfig{
		CacheDir: cacheDir, Out: out,
		Name: "storage-e2e", Module: kubernetesModule, Version: k8s,
		Packages: []string{"k8s.io/kubernetes/test/e2e", "k8s.io/kubernetes/test/e2e/storage/external", agnhostPackage},
		Files:    map[string][]byte{e2eMainDir + "/main_test.go": e2eMain},
	}, []cluster.BuildTarget{
		{Name: "agnhost", Package: agnhostPackage, Dst: bins.Agnhost},
		{Name: "storage e2e binary", Package: "./" + e2eMainDir, Dst: bins.E2E, Test: true},
	}); err != nil {
		return nil, err
	}
	if err := cluster.EnsureBuilt(ctx, cluster.ModuleBuildConfig{
		CacheDir: cacheDir, Out: out,
		Name: "csi-sanity", Module: csiTestModule, Version: csiTestVersion,
		Packages: []string{csiSanityPackage},
	}, []cluster.BuildTarget{{Name: "csi-sanity", Package: csiSanityPackage, Dst: bins.CSISanity}}); err != nil {
		return nil, err
	}
	return bins, nil
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
