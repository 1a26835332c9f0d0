// Package snapshotter makes and deletes the snapshots of one node's volumes:
// what the csi-snapshotter sidecar does for a driver, done by the node's
// agent for its own VolumeSnapshotContents.
//
// The work is the upstream sidecar's own controller
// (external-snapshotter's pkg/sidecar-controller), run in the agent and
// talking to the node's driver over its CSI socket like the sidecar would.
// Its state machine (the being-created annotation, status updates, the
// deletion of contents whose VolumeSnapshot is gone, pre-provisioned
// contents checked with ListSnapshots) is subtle and well tested upstream,
// and it imports cleanly; a state machine of our own would only be a
// second copy to keep right.
//
// What makes it a node's: the snapshot-controller, run with
// --enable-distributed-snapshotting, labels each content with the node of
// its source PV (snapshot.storage.kubernetes.io/managed-by), and the
// contents informer here lists only the contents with this node's label, as
// csi-snapshotter's --node-deployment does. A content is so handled by
// exactly one agent, the one whose driver holds the volume (and, after,
// the snapshot), and no agent holds every content of the cluster in memory.
//
// The snapshot API is not part of Kubernetes: clusters without the CRDs
// (kind, by default) are common. Run waits for them, looking once a
// minute, so that installing them later needs no restart of the agents.
package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	snapclientset "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapscheme "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/scheme"
	snapinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	sidecar "github.com/kubernetes-csi/external-snapshotter/v8/pkg/sidecar-controller"
	"github.com/kubernetes-csi/external-snapshotter/v8/pkg/snapshotter"
	"github.com/kubernetes-csi/external-snapshotter/v8/pkg/utils"
	"google.golang.org/grpc"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// Defaults for Config.
const (
	// DefaultTimeout bounds one CreateSnapshot or DeleteSnapshot call. A
	// btrfs snapshot is O(1), but a directory or an image is copied, and a
	// call that times out is retried (the driver answers a repeated
	// CreateSnapshot with the snapshot it made).
	DefaultTimeout = 5 * time.Minute
	// DefaultWorkers is how many contents are worked on at once.
	DefaultWorkers = 2
	// DefaultResyncPeriod is how often every content of the node is looked
	// at again, as csi-snapshotter's default.
	DefaultResyncPeriod = 15 * time.Minute
	// DefaultCRDInterval is how often Run looks for the snapshot CRDs
	// while they are missing.
	DefaultCRDInterval = time.Minute
)

// snapshotNamePrefix and snapshotNameUUIDLength make the name CreateSnapshot
// gets, snapshot-<VolumeSnapshot UID> (csi-snapshotter's defaults), which
// the driver uses as the snapshot's ID: the same VolumeSnapshot always asks
// for the same snapshot, so a retry finds the one made.
const (
	snapshotNamePrefix     = "snapshot"
	snapshotNameUUIDLength = -1
)

// Config configures New.
type Config struct {
	// NodeName is this node; DriverName the driver's name, which a content
	// must name too.
	NodeName, DriverName string
	// Conn is a connection to this node's driver.
	Conn *grpc.ClientConn
	// Client writes events; Snapshots reads and writes the contents and
	// reads the classes.
	Client    kubernetes.Interface
	Snapshots snapclientset.Interface
	// Zero values take the defaults above.
	Timeout, ResyncPeriod, CRDInterval time.Duration
	Workers                            int
}

// Snapshotter runs the sidecar controller for one node.
type Snapshotter struct {
	cfg Config
}

// registerScheme adds the snapshot types to client-go's scheme, which the
// sidecar's event recorder uses to name the object of an event.
var registerScheme = sync.OnceValue(func() error { return snapscheme.AddToScheme(scheme.Scheme) })

// New checks cfg and fills in the defaults.
func New(cfg Config) (*Snapshotter, error) {
	if err := registerScheme(); err != nil {
		return nil, fmt.Errorf("snapshotter: %w", err)
	}
	switch {
	case cfg.NodeName == "", cfg.DriverName == "":
		return nil, errors.New("snapshotter: node and driver names are required")
	case cfg.Conn == nil, cfg.Client == nil, cfg.Snapshots == nil:
		return nil, errors.New("snapshotter: a driver connection and both clients are required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.ResyncPeriod <= 0 {
		cfg.ResyncPeriod = DefaultResyncPeriod
	}
	if cfg.CRDInterval <= 0 {
		cfg.CRDInterval = DefaultCRDInterval
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	return &Snapshotter{cfg: cfg}, nil
}

// Run waits for the snapshot API, then makes and deletes this node's
// snapshots until ctx is done.
func (s *Snapshotter) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("snapshotter")
	if err := WaitForAPI(klog.NewContext(ctx, logger), s.cfg.Snapshots.Discovery(), s.cfg.CRDInterval); err != nil {
		return nil // ctx done
	}
	cfg := s.cfg
	node := labels.Set{utils.VolumeSnapshotContentManagedByLabel: cfg.NodeName}.AsSelector().String()
	contents := snapinformers.NewSharedInformerFactoryWithOptions(cfg.Snapshots, cfg.ResyncPeriod,
		snapinformers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = node }))
	classes := snapinformers.NewSharedInformerFactory(cfg.Snapshots, cfg.ResyncPeriod)
	// Group snapshots are off: the driver has no group controller service.
	ctrl := sidecar.NewCSISnapshotSideCarController(
		cfg.Snapshots, cfg.Client, cfg.DriverName,
		contents.Snapshot().V1().VolumeSnapshotContents(), classes.Snapshot().V1().VolumeSnapshotClasses(),
		snapshotter.NewSnapshotter(cfg.Conn), nil,
		cfg.Timeout, cfg.ResyncPeriod, snapshotNamePrefix, snapshotNameUUIDLength, "", 0,
		false, // no extra create metadata: the driver takes no parameters
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 5*time.Minute),
		false, nil, nil, nil)
	strays := snapinformers.NewSharedInformerFactoryWithOptions(cfg.Snapshots, cfg.ResyncPeriod,
		snapinformers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = unlabelled }))
	claims, err := newClaimer(cfg, strays)
	if err != nil {
		return err
	}
	for _, f := range []snapinformers.SharedInformerFactory{contents, classes, strays} {
		f.Start(ctx.Done())
		defer f.Shutdown()
	}
	var wg sync.WaitGroup
	wg.Go(func() { claims.run(klog.NewContext(ctx, logger)) })
	logger.Info("Making this node's snapshots", "selector", node)
	ctrl.Run(cfg.Workers, ctx.Done(), &wg)
	wg.Wait()
	return nil
}

// WaitForAPI returns when the API server serves VolumeSnapshotContents and
// VolumeSnapshotClasses, looking every interval and saying once that it
// waits, or ctx's error.
func WaitForAPI(ctx context.Context, d discovery.DiscoveryInterface, interval time.Duration) error {
	logger := klog.FromContext(ctx)
	told := false
	return wait.PollUntilContextCancel(ctx, interval, true, func(ctx context.Context) (bool, error) {
		err := hasSnapshotAPI(d)
		if err != nil && !told {
			logger.Info("No snapshots until the VolumeSnapshot CRDs are installed; looking again every "+interval.String(), "reason", err.Error())
			told = true
		}
		return err == nil, nil
	})
}

// hasSnapshotAPI tells, as an error, why the snapshot API is not there.
func hasSnapshotAPI(d discovery.DiscoveryInterface) error {
	const gv = "snapshot.storage.k8s.io/v1"
	list, err := d.ServerResourcesForGroupVersion(gv)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", gv, err)
	}
	var names []string
	for _, r := range list.APIResources {
		names = append(names, r.Name)
	}
	for _, want := range []string{"volumesnapshotcontents", "volumesnapshotclasses"} {
		if !slices.Contains(names, want) {
			return fmt.Errorf("%s has no %s", gv, want)
		}
	}
	return nil
}
