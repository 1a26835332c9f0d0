package provisioner

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller/metrics"

	"github.com/stickyvol/stickyvol/internal/cachetrim"
)

// Defaults for ControllerConfig.
const (
	// DefaultThreadiness is the number of claim workers (and as many volume
	// workers). A Provision is one CreateVolume, whose crash-safe record
	// costs a few fsyncs, plus one PV create. Measured with the real driver
	// and a fake API server: one worker ~36 claims/s, ten ~90 claims/s.
	// Ten keep the API client's QPS, not the workers, the limit.
	DefaultThreadiness = 10
	// DefaultRetryIntervalStart and DefaultRetryIntervalMax bound the
	// per-claim exponential backoff after a failed Provision or Delete, as
	// external-provisioner's --retry-interval-start/-max do.
	DefaultRetryIntervalStart = time.Second
	DefaultRetryIntervalMax   = 5 * time.Minute
	// DefaultResyncPeriod is how often the informers replay every object,
	// which retries claims whose retries were dropped.
	DefaultResyncPeriod = 15 * time.Minute
)

// ControllerConfig configures NewController.
type ControllerConfig struct {
	// Provisioner configures the Provisioner. Leave Nodes nil: the
	// controller fills it with a lister that watches only this node.
	Provisioner Config
	// Client talks to the API server. Its QPS and burst bound how fast
	// claims turn into PVs: each one costs about three writes (the PV with
	// the finalizer already on it, and two events).
	Client kubernetes.Interface
	// Informers is the cluster-wide informer factory, shared with the
	// placement duty. NewController takes the claim, PV and StorageClass
	// informers from it; Run starts it.
	Informers informers.SharedInformerFactory
	// Threadiness is the number of claim workers; zero means
	// DefaultThreadiness.
	Threadiness int
	// RetryIntervalStart and RetryIntervalMax bound the backoff of failed
	// claims and volumes; zero means the defaults.
	RetryIntervalStart, RetryIntervalMax time.Duration
	// ResyncPeriod is the informers' resync period; zero means
	// DefaultResyncPeriod. It should match the factory's.
	ResyncPeriod time.Duration
}

// Controller runs the library's ProvisionController with a Provisioner for
// this node.
type Controller struct {
	lib       *controller.ProvisionController
	informers informers.SharedInformerFactory
	node      informers.SharedInformerFactory
	metrics   metrics.Metrics
	workers   *sync.WaitGroup
	nodeName  string
	// synced is set once the informers' caches have synced and the
	// library's workers start.
	synced atomic.Bool
}

// NewController builds the Provisioner and the library controller with the
// options stickyvol needs. The library makes its own event broadcaster on
// cfg.Client and logs every event it records at V(0) ("Event occurred");
// that is the library's setting.
func NewController(ctx context.Context, cfg ControllerConfig) (*Controller, error) {
	if cfg.Client == nil || cfg.Informers == nil {
		return nil, errors.New("provisioner: client and informer factory are required")
	}
	withDefaults(&cfg)

	// One Node object matters here, this node's, and only whether it
	// exists: a field-selected informer keeps just that one in memory
	// instead of every node, and only its metadata.
	node := informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.ResyncPeriod,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector(metav1.ObjectNameField, cfg.Provisioner.NodeName).String()
		}), informers.WithTransform(cachetrim.Node))
	cfg.Provisioner.Nodes = node.Core().V1().Nodes().Lister()
	cfg.Provisioner.Classes = cfg.Informers.Storage().V1().StorageClasses().Lister()
	cfg.Provisioner.Claims = cfg.Informers.Core().V1().PersistentVolumeClaims().Lister()
	cfg.Provisioner.Volumes = cfg.Informers.Core().V1().PersistentVolumes().Lister()
	p, err := New(cfg.Provisioner)
	if err != nil {
		return nil, err
	}

	m := metrics.New("controller")
	lib := controller.NewProvisionController(ctx, cfg.Client, cfg.Provisioner.DriverName, p, libraryOptions(cfg, m)...)
	// Run returns when ctx is done, not when the workers are; the wait
	// group lets Run wait for Provision calls in flight, so the caller can
	// stop the driver only after them.
	workers := &sync.WaitGroup{}
	lib.ControllerWaitGroup(workers)
	return &Controller{lib: lib, informers: cfg.Informers, node: node,
		metrics: m, workers: workers, nodeName: cfg.Provisioner.NodeName}, nil
}

func withDefaults(cfg *ControllerConfig) {
	if cfg.Threadiness <= 0 {
		cfg.Threadiness = DefaultThreadiness
	}
	if cfg.RetryIntervalStart <= 0 {
		cfg.RetryIntervalStart = DefaultRetryIntervalStart
	}
	if cfg.RetryIntervalMax <= 0 {
		cfg.RetryIntervalMax = DefaultRetryIntervalMax
	}
	if cfg.ResyncPeriod <= 0 {
		cfg.ResyncPeriod = DefaultResyncPeriod
	}
}

// libraryOptions are the library settings, each chosen on purpose.
func libraryOptions(cfg ControllerConfig, m metrics.Metrics) []func(*controller.ProvisionController) error {
	return []func(*controller.ProvisionController) error{
		// Every node runs its own instance and ShouldProvision splits the
		// work by node, so all instances must run at once. The library's
		// election would leave one instance active for the whole cluster.
		controller.LeaderElection(false),
		// The library puts external-provisioner.volume.kubernetes.io/finalizer
		// on the PVs it creates and keeps it while the reclaim policy is
		// Delete (it takes it off for Retain). A PV deleted by hand then
		// still has its directory removed before the object goes away,
		// instead of leaving the directory behind on the node.
		controller.AddFinalizer(true),
		// Claims worked on in parallel (and as many volume workers). One
		// worker spends most of its time waiting for the driver's fsyncs;
		// see DefaultThreadiness.
		controller.Threadiness(cfg.Threadiness),
		// Per-item exponential backoff only. The library's default adds a
		// 10/s bucket shared by all items and starts at 15s, which makes
		// a few hundred claims retrying after a driver restart wait in
		// one line; the API client's QPS already protects the server.
		// The same limiter serves the claim and the volume queue; their
		// keys (claim UID, PV name) do not collide.
		controller.RateLimiter(workqueue.NewTypedItemExponentialFailureRateLimiter[string](
			cfg.RetryIntervalStart, cfg.RetryIntervalMax)),
		// Retry without a cap: a claim whose node is briefly overloaded
		// or whose API writes fail must not be given up after 15 tries
		// and stay Pending until the next resync.
		controller.FailedProvisionThreshold(0),
		controller.FailedDeleteThreshold(0),
		// Save PVs whose create failed from a background queue, forever.
		// Without this the library retries 5 times in 50s and then
		// deletes the volume it just made; for a node-local volume that
		// is wasted work at best.
		controller.CreateProvisionedPVLimiter(workqueue.NewTypedItemExponentialFailureRateLimiter[string](
			cfg.RetryIntervalStart, cfg.RetryIntervalMax)),
		// Share informers with the placement duty and with the process'
		// other users instead of the library's private copies.
		controller.ClaimsInformer(claimView{
			SharedIndexInformer: cfg.Informers.Core().V1().PersistentVolumeClaims().Informer(),
			h:                   &handOver{nodeName: cfg.Provisioner.NodeName, driverName: cfg.Provisioner.DriverName, classes: cfg.Informers.Storage().V1().StorageClasses().Lister()},
		}),
		controller.VolumesInformer(cfg.Informers.Core().V1().PersistentVolumes().Informer()),
		controller.ClassesInformer(cfg.Informers.Storage().V1().StorageClasses().Informer()),
		// The period of the library's own handlers on those informers:
		// every claim and PV is looked at again this often.
		controller.ResyncPeriod(cfg.ResyncPeriod),
		// Keep the library's metrics out of the global registry; the
		// caller registers Collectors in its own.
		controller.MetricsInstance(m),
	}
}

// Collectors returns the library's provisioning and deletion metrics.
func (c *Controller) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		c.metrics.PersistentVolumeClaimProvisionTotal,
		c.metrics.PersistentVolumeClaimProvisionFailedTotal,
		c.metrics.PersistentVolumeClaimProvisionDurationSeconds,
		c.metrics.PersistentVolumeDeleteTotal,
		c.metrics.PersistentVolumeDeleteFailedTotal,
		c.metrics.PersistentVolumeDeleteDurationSeconds,
	}
}

// Synced returns nil once Run has synced the informers' caches, so claims
// are being provisioned; the readiness check.
func (c *Controller) Synced() error {
	if !c.synced.Load() {
		return errors.New("the provisioner's informers have not synced yet")
	}
	return nil
}

// Run starts the informers, waits for their caches and runs the controller
// until ctx is done and its workers have returned.
func (c *Controller) Run(ctx context.Context) error {
	c.node.StartWithContext(ctx)
	c.informers.StartWithContext(ctx)
	if err := c.node.WaitForCacheSyncWithContext(ctx).AsError(); err != nil {
		return fmt.Errorf("waiting for the node informer: %w", err)
	}
	if err := c.informers.WaitForCacheSyncWithContext(ctx).AsError(); err != nil {
		return fmt.Errorf("waiting for informers: %w", err)
	}
	klog.FromContext(ctx).V(2).Info("Provisioner running", "node", c.nodeName)
	c.synced.Store(true)
	c.lib.Run(ctx)
	c.workers.Wait()
	c.node.Shutdown()
	return nil
}
