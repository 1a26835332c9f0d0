// Package framework deploys stickyvol on the project's local cluster
// (e2e/cluster) and gives the e2e suite and the demo what they need to watch
// it work: image builds, kustomize rendering with server-side apply, waits
// that follow watches, exec in pods, and a dump of what explains a failure.
package framework

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/mod/modfile"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/stickyvol/stickyvol/e2e/cluster"
)

// Names the deployment uses (deploy/base).
const (
	DriverName     = "hostpath.stickyvol.dev"
	TopologyKey    = "topology.hostpath.stickyvol.dev/node"
	Namespace      = "stickyvol"
	DaemonSetName  = "stickyvol-node"
	ControllerName = "stickyvol-controller"
	AgentPodLabel  = "app.kubernetes.io/name=stickyvol-node"
	StorageClass   = "stickyvol"
	LocalOverlay   = "deploy/overlays/local"
	ExampleWebFile = "deploy/examples/web.yaml"
)

// FieldManager owns the fields the framework applies (server-side apply).
const FieldManager = "stickyvol-e2e"

// Framework talks to one local cluster.
type Framework struct {
	Cluster *cluster.Cluster
	Config  *rest.Config
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	Mapper  meta.ResettableRESTMapper
	// RepoDir is the root of the stickyvol source tree.
	RepoDir string
}

// New connects to the cluster. repoDir is the source tree, as RepoDir finds it.
func New(c *cluster.Cluster, repoDir string) (*Framework, error) {
	cfg, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(cs.Discovery()))
	return &Framework{Cluster: c, Config: cfg, Client: cs, Dynamic: dyn, Mapper: mapper, RepoDir: repoDir}, nil
}

// Path returns a path of the source tree.
func (f *Framework) Path(rel string) string { return filepath.Join(f.RepoDir, rel) }

// RepoDir returns the root of the stickyvol source tree that holds dir (the
// directory with stickyvol's go.mod), so that tests run from their package
// directory and programs run from anywhere in the tree find deploy/.
func RepoDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := abs; ; d = filepath.Dir(d) {
		data, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && isStickyvolModule(data) {
			return d, nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("%s is not inside the stickyvol source tree (no go.mod of %s above it)", abs, module)
		}
	}
}

const module = "github.com/stickyvol/stickyvol"

func isStickyvolModule(gomod []byte) bool { return modfile.ModulePath(gomod) == module }

// Logf prints a progress line; the suite and the demo pass their own.
type Logf func(format string, args ...any)
