package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"sync/atomic"

	snapclientset "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/duties"
	"github.com/stickyvol/stickyvol/internal/cachetrim"
	"github.com/stickyvol/stickyvol/provisioner"
)

// controllerOptions are the flags of `stickyvol controller`.
type controllerOptions struct {
	identity       string
	namespace      string
	kubeconfig     string
	qps            float32
	burst          int
	metricsAddress string
	profiling      bool
}

func newControllerCommand(env environment) *cobra.Command {
	o := &controllerOptions{}
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run the cluster duties: placement of Immediate claims, copies to their sources' nodes, node loss",
		Long: "Runs what no single node owns, while this process holds the Lease " + driver.Name + ":\n" +
			"choosing a node for claims of Immediate-binding classes, moving clones and restores the\n" +
			"scheduler placed on another node to their source's node, and the claims, PVs and deleted\n" +
			"snapshots of deleted nodes (StorageClass parameter nodeLossPolicy). It is a Deployment of its own so\n" +
			"that the node agents need no rights over other nodes' claims and PVs. Run two for a\n" +
			"quick hand-over; one acts at a time.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return runController(cmd.Context(), o)
		},
	}
	identity := env.podName
	if identity == "" {
		identity, _ = os.Hostname()
	}
	f := cmd.Flags()
	f.StringVar(&o.identity, "identity", identity, "This candidate's name in the Lease, unique among candidates; defaults to $POD_NAME, else the host name.")
	f.StringVar(&o.namespace, "namespace", env.namespaceOr("stickyvol"), "Namespace of the Lease and of the CSIStorageCapacity objects; defaults to $POD_NAMESPACE when set.")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file. Empty: the in-cluster service account.")
	f.Float32Var(&o.qps, "kube-api-qps", 20, "Sustained requests per second to the API server.")
	f.IntVar(&o.burst, "kube-api-burst", 40, "Requests allowed in a burst above --kube-api-qps.")
	f.StringVar(&o.metricsAddress, "metrics-address", ":9809", "host:port for /healthz, /readyz and /metrics. Empty: no HTTP server.")
	f.BoolVar(&o.profiling, "profiling", false, profilingUsage)
	return cmd
}

func (o *controllerOptions) validate() error {
	var errs []error
	if o.identity == "" {
		errs = append(errs, errors.New("--identity is required (or set POD_NAME)"))
	}
	if o.namespace == "" {
		errs = append(errs, errors.New("--namespace is required (or set POD_NAMESPACE)"))
	}
	if o.qps <= 0 || o.burst <= 0 {
		errs = append(errs, errors.New("--kube-api-qps and --kube-api-burst must be positive"))
	}
	if o.profiling && o.metricsAddress == "" {
		errs = append(errs, errProfilingWithoutServer)
	}
	return errors.Join(errs...)
}

// clusterController is everything `stickyvol controller` runs.
type clusterController struct {
	opts       *controllerOptions
	informers  informers.SharedInformerFactory
	capacities informers.SharedInformerFactory
	placement  *duties.Placement
	nodeLoss   *duties.NodeLoss
	copies     *duties.Copies
	// lostSnapshots is nil without a snapshot client.
	lostSnapshots *duties.LostSnapshots
	leader        duties.LeaderConfig
	// synced is set once the informers have synced: the process is ready
	// to lead, whether it leads or waits.
	synced atomic.Bool
}

// snaps reads the VolumeSnapshots that claims restore and lets the deleted
// snapshots of gone nodes go; nil leaves restores where the scheduler put
// them and snapshots to the nodes.
func newClusterController(o *controllerOptions, kube kubernetes.Interface, snaps snapclientset.Interface) (*clusterController, error) {
	c := &clusterController{
		opts: o,
		// The duties write claims and PVs only with merge patches of the
		// fields they change, so the caches may go without managedFields.
		informers: informers.NewSharedInformerFactoryWithOptions(kube, provisioner.DefaultResyncPeriod,
			informers.WithTransform(cachetrim.ManagedFields)),
		capacities: informers.NewSharedInformerFactoryWithOptions(kube, provisioner.DefaultResyncPeriod,
			informers.WithNamespace(o.namespace), informers.WithTransform(cachetrim.ManagedFields)),
		// The Lease is the one the agents used when they ran the duties
		// themselves: during an upgrade an old agent and a new controller
		// still never lead at once.
		leader: duties.LeaderConfig{Client: kube, Namespace: o.namespace, Name: driver.Name, Identity: o.identity},
	}
	var err error
	c.placement, err = duties.NewPlacement(duties.PlacementConfig{
		DriverName: driver.Name, TopologyKey: driver.TopologyKey, Client: kube,
		Informers: c.informers, CapacityInformers: c.capacities,
	})
	if err != nil {
		return nil, err
	}
	var reader provisioner.SnapshotReader
	if snaps != nil {
		reader = provisioner.ClientSnapshots(snaps)
		c.lostSnapshots, err = duties.NewLostSnapshots(duties.LostSnapshotsConfig{
			DriverName: driver.Name, Client: kube, Snapshots: snaps, Informers: c.informers,
		})
		if err != nil {
			return nil, err
		}
	}
	c.copies, err = duties.NewCopies(duties.CopiesConfig{
		DriverName: driver.Name, TopologyKey: driver.TopologyKey, Client: kube, Informers: c.informers, Snapshots: reader,
	})
	if err != nil {
		return nil, err
	}
	c.nodeLoss, err = duties.NewNodeLoss(duties.NodeLossConfig{
		DriverName: driver.Name, TopologyKey: driver.TopologyKey, Client: kube,
		Informers: c.informers, CapacityInformers: c.capacities,
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// run starts the informers for the life of the process (a new leader starts
// with warm caches), campaigns for the Lease and serves /healthz, /readyz and
// /metrics, until ctx is done.
func (c *clusterController) run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	c.informers.StartWithContext(ctx)
	c.capacities.StartWithContext(ctx)
	g.Go(func() error {
		for _, f := range []informers.SharedInformerFactory{c.informers, c.capacities} {
			for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
				if !ok {
					return fmt.Errorf("informer for %v did not sync", typ)
				}
			}
		}
		c.synced.Store(true)
		return nil
	})
	g.Go(func() error { return duties.RunLeaderElected(ctx, c.leader, c.runDuties) })
	if c.opts.metricsAddress != "" {
		g.Go(func() error { return serveHTTP(ctx, c.opts.metricsAddress, c.httpHandler()) })
	}
	err := g.Wait()
	c.informers.Shutdown()
	c.capacities.Shutdown()
	return err
}

// runDuties runs the cluster duties while this process holds the Lease, and
// returns once all have stopped (see RunLeaderElected).
func (c *clusterController) runDuties(ctx context.Context) {
	var wg sync.WaitGroup
	run := map[string]func(context.Context) error{
		"placement": c.placement.Run,
		"node loss": c.nodeLoss.Run,
		"copies":    c.copies.Run,
	}
	if c.lostSnapshots != nil {
		run["lost snapshots"] = c.lostSnapshots.Run
	}
	for name, run := range run {
		wg.Go(func() {
			if err := run(ctx); err != nil {
				klog.FromContext(ctx).Error(err, "Cluster duty stopped", "duty", name)
			}
		})
	}
	wg.Wait()
}

func (c *clusterController) httpHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ready := []healthCheck{{"informers", func(context.Context) error {
		if !c.synced.Load() {
			return errors.New("not synced yet")
		}
		return nil
	}}}
	mux := http.NewServeMux()
	// Live as long as it answers: the election and the duties restart
	// themselves, and the informers retry on their own.
	mux.Handle("GET /healthz", healthzHandler(nil))
	mux.Handle("GET /readyz", healthzHandler(ready))
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if c.opts.profiling {
		handleProfiling(mux)
	}
	return mux
}

// runController runs the cluster duties until ctx is done.
func runController(ctx context.Context, o *controllerOptions) error {
	cfg, err := restConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	kube, err := kubeClient(cfg, o.qps, o.burst)
	if err != nil {
		return err
	}
	snaps, err := snapclientset.NewForConfig(cfg)
	if err != nil {
		return err
	}
	c, err := newClusterController(o, kube, snaps)
	if err != nil {
		return err
	}
	return c.run(ctx)
}
