package provisioner_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/internal/fixtures"
	"github.com/stickyvol/stickyvol/provisioner"
)

// nodeDriver is the real driver of one node, serving on a temp socket.
type nodeDriver struct {
	name     string
	dataRoot string
	conn     *grpc.ClientConn
	// controller counts the calls per method on its way to the driver.
	controller csi.ControllerClient
	node       csi.NodeClient

	mu    sync.Mutex
	calls map[string]int
}

// startDriver runs the real driver for node on a temp data root with the
// given capacity until the test ends.
func startDriver(t *testing.T, node string, capacity int64) *nodeDriver {
	t.Helper()
	nd := &nodeDriver{name: node, calls: map[string]int{}}
	conn, cfg := fixtures.ServeDriver(t, driver.Config{NodeID: node, Capacity: capacity},
		grpc.WithChainUnaryInterceptor(nd.count))
	nd.dataRoot, nd.conn = cfg.DataRoot, conn
	nd.controller = csi.NewControllerClient(conn)
	nd.node = csi.NewNodeClient(conn)
	return nd
}

func (nd *nodeDriver) count(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	nd.mu.Lock()
	nd.calls[method]++
	nd.mu.Unlock()
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (nd *nodeDriver) createCalls() int {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.calls[csi.Controller_CreateVolume_FullMethodName]
}

// volumeDirs lists the volume directories the driver made.
func (nd *nodeDriver) volumeDirs(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(nd.dataRoot, "volumes"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// nodeLister holds the given nodes.
func nodeLister(t *testing.T, nodes ...*v1.Node) corelisters.NodeLister {
	t.Helper()
	f := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	inf := f.Core().V1().Nodes()
	for _, n := range nodes {
		if err := inf.Informer().GetStore().Add(n); err != nil {
			t.Fatal(err)
		}
	}
	return inf.Lister()
}

// newProvisioner is a Provisioner for nd's node, whose Node object exists.
func newProvisioner(t *testing.T, nd *nodeDriver) *provisioner.Provisioner {
	t.Helper()
	p, err := provisioner.New(provisioner.Config{
		NodeName: nd.name, DriverName: driver.Name, TopologyKey: driver.TopologyKey,
		ControllerClient: nd.controller, Nodes: nodeLister(t, fixtures.ReadyNode(nd.name)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
