// Package capacity publishes what a node's driver can still make as
// CSIStorageCapacity objects, so that the scheduler keeps claims off nodes
// that have no room for them instead of sending them there to be refused.
//
// Each node agent runs one Publisher for its own node. For every
// StorageClass of the driver it keeps one object in the driver's namespace
// whose nodeTopology selects this node (matchLabels on the driver's topology
// key), with the capacity and the largest volume the driver answers in
// GetCapacity. The numbers come over the driver's socket like any CSI
// client's, so what is published is what GetCapacity says; the package never
// imports the driver.
//
// The objects are found again by their labels
// (csi.storage.k8s.io/drivername and csi.storage.k8s.io/managed-by
// stickyvol-<node>) and owned by the agents' DaemonSet, so that they go
// with the install; a deleted node's are deleted by the node-loss duty.
package capacity

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// Defaults for Config.
const (
	// DefaultMinInterval is the least time between two update passes. A
	// burst of creates and deletes (a 300-claim StatefulSet) makes one
	// pass per interval, not one per volume: at most one write per class
	// every 5 s. While the published room is stale the scheduler may
	// send a claim to a node that just filled up, which refuses it
	// (ResourceExhausted) and sends it back, as it did before capacity
	// was published; 5 s keeps that window to about one scheduling retry.
	DefaultMinInterval = 5 * time.Second
	// DefaultNowInterval is the least time between two passes when one
	// is asked for with NotifyNow: the room shrank, or a class is new.
	// The scheduler takes the published room as it finds it and reserves
	// nothing for claims it has just placed, so a node whose room shrank
	// should say so before the next pod is placed: a StatefulSet's next
	// pod comes once the last one is Ready, seconds after its volume was
	// made. Room that grew can wait for MinInterval: until it is
	// published, a claim only goes to another node.
	DefaultNowInterval = 100 * time.Millisecond
	// DefaultResyncPeriod is how often the objects are checked against
	// the driver when nothing happened: a lost write, an object edited by
	// hand, an owner that changed.
	DefaultResyncPeriod = time.Minute
	// DefaultTimeout bounds one GetCapacity call. The driver answers from
	// memory; a call that takes longer is stuck.
	DefaultTimeout = 10 * time.Second
)

// Labels of the published objects, as external-provisioner names them.
const (
	LabelDriverName = "csi.storage.k8s.io/drivername"
	LabelManagedBy  = "csi.storage.k8s.io/managed-by"
)

// generateName is the prefix of the objects' names.
const generateName = "csisc-"

// Config configures New.
type Config struct {
	// NodeName is this node; TopologyKey with NodeName as its value is the
	// nodeTopology of every object, as the driver reports it.
	NodeName, DriverName, TopologyKey string
	// Namespace is where the objects live: the driver's, where the
	// scheduler and the placement duty look for them.
	Namespace string
	// ControllerClient is the node's driver: GetCapacity.
	ControllerClient csi.ControllerClient
	Client           kubernetes.Interface
	// Informers is the cluster-wide factory the provisioner shares
	// (StorageClasses). Run starts it too.
	Informers informers.SharedInformerFactory
	// OwnerPod names the agent's own pod in Namespace. Its controller (the
	// agents' DaemonSet), or the pod itself when nothing controls it, owns
	// the objects, so that the garbage collector deletes them with the
	// install. Empty: no owner (an agent outside a pod); the objects then
	// stay until deleted by hand or with their node.
	OwnerPod string
	// MinInterval, NowInterval, ResyncPeriod and Timeout: zero means the
	// defaults.
	MinInterval, NowInterval, ResyncPeriod, Timeout time.Duration
}

// Publisher keeps this node's CSIStorageCapacity objects in line with what
// the driver answers.
type Publisher struct {
	cfg     Config
	classes storagelisters.StorageClassLister
	objects storagelisters.CSIStorageCapacityLister
	// selector selects this node's objects by their labels.
	selector  labels.Selector
	own       informers.SharedInformerFactory
	informers []cache.SharedIndexInformer
	queue     workqueue.TypedRateLimitingInterface[string]
	// now cuts the wait after a pass short (NotifyNow); it holds one
	// signal at most.
	now    chan struct{}
	writes *prometheus.CounterVec
	// owner is the owner reference found last, nil before the first
	// look-up or without Config.OwnerPod. Only the worker uses it.
	owner *metav1.OwnerReference
}

// syncKey is the queue's only key: every pass looks at all classes.
const syncKey = "capacity"

// New checks cfg, takes the StorageClass informer from cfg.Informers and
// makes an informer of its own for this node's objects.
func New(cfg Config) (*Publisher, error) {
	if cfg.NodeName == "" || cfg.DriverName == "" || cfg.TopologyKey == "" || cfg.Namespace == "" ||
		cfg.ControllerClient == nil || cfg.Client == nil || cfg.Informers == nil {
		return nil, errors.New("capacity: node, driver, topology key, namespace, CSI client, API client and informers are required")
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	if cfg.NowInterval <= 0 {
		cfg.NowInterval = DefaultNowInterval
	}
	if cfg.ResyncPeriod <= 0 {
		cfg.ResyncPeriod = DefaultResyncPeriod
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	// Only this node's objects, in the driver's namespace: the informer
	// holds a handful of objects however large the cluster. No resync:
	// the queue has its own.
	selector := labels.SelectorFromSet(Labels(cfg.DriverName, cfg.NodeName))
	own := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector.String() }))
	p := &Publisher{
		cfg:      cfg,
		now:      make(chan struct{}, 1),
		selector: selector,
		classes:  cfg.Informers.Storage().V1().StorageClasses().Lister(),
		objects:  own.Storage().V1().CSIStorageCapacities().Lister(),
		own:      own,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, cfg.ResyncPeriod),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "capacity"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stickyvol_storage_capacity_writes_total",
			Help: "Writes of this node's CSIStorageCapacity objects, by operation (create, update, delete).",
		}, []string{"operation"}),
	}
	classInformer := cfg.Informers.Storage().V1().StorageClasses().Informer()
	objectInformer := own.Storage().V1().CSIStorageCapacities().Informer()
	p.informers = []cache.SharedIndexInformer{classInformer, objectInformer}
	// A class of the driver added or deleted adds or deletes its object.
	// (A class's provisioner and parameters cannot change.)
	if _, err := classInformer.AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: p.driverClass,
		Handler: cache.ResourceEventHandlerFuncs{
			// A new class has no room published at all until the pass:
			// its first pods would wait a MinInterval for nothing.
			AddFunc:    func(any) { p.NotifyNow() },
			DeleteFunc: func(any) { p.Notify() },
		},
	}); err != nil {
		return nil, err
	}
	// Any change to this node's objects is looked at: one deleted (by hand,
	// by the garbage collector) is made again, one edited is set right. The
	// publisher's own writes come back here too and cost one pass that
	// writes nothing.
	if _, err := objectInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { p.Notify() },
		UpdateFunc: func(any, any) { p.Notify() },
		DeleteFunc: func(any) { p.Notify() },
	}); err != nil {
		return nil, err
	}
	return p, nil
}

// Labels are the labels of the objects the agent of node publishes for
// driver, by which it finds them again.
func Labels(driver, node string) map[string]string {
	return map[string]string{LabelDriverName: driver, LabelManagedBy: ManagedBy(node)}
}

// driverClass tells whether obj is a StorageClass of the driver (or the
// tombstone of one).
func (p *Publisher) driverClass(obj any) bool {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	class, ok := obj.(*storagev1.StorageClass)
	return ok && class.Provisioner == p.cfg.DriverName
}

// Collectors returns the publisher's metrics.
func (p *Publisher) Collectors() []prometheus.Collector { return []prometheus.Collector{p.writes} }

// Notify asks for an update pass: the driver's volumes (or the classes)
// changed. It never blocks. Calls that come while a pass is due or running,
// or within MinInterval of the last, are folded into one pass.
func (p *Publisher) Notify() { p.queue.Add(syncKey) }

// NotifyNow asks for an update pass within NowInterval rather than
// MinInterval: the room shrank or a class is new. It never blocks.
func (p *Publisher) NotifyNow() {
	p.queue.Add(syncKey)
	select {
	case p.now <- struct{}{}:
	default:
	}
}

// Run starts the informers, publishes, and keeps the objects up to date
// until ctx is done. It returns only then, so that its informers (and the
// shared factory's, if it started them) are not stopped under the other
// parts of the agent.
func (p *Publisher) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("capacity")
	ctx = klog.NewContext(ctx, logger)
	defer p.queue.ShutDown()
	p.cfg.Informers.StartWithContext(ctx)
	p.own.StartWithContext(ctx)
	defer p.own.Shutdown()
	synced := make([]cache.InformerSynced, 0, len(p.informers))
	for _, inf := range p.informers {
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForNamedCacheSyncWithContext(ctx, synced...) {
		return nil // ctx is done
	}
	logger.V(2).Info("Publishing storage capacity", "node", p.cfg.NodeName, "namespace", p.cfg.Namespace)
	stop := context.AfterFunc(ctx, p.queue.ShutDown)
	defer stop()
	p.queue.Add(syncKey)
	for p.next(ctx) {
	}
	return nil
}

// next runs one pass, then holds the key for MinInterval before it lets go
// of it. Notify calls meanwhile only mark the key dirty, and the queue hands
// it out once more when it is done: one pass for a whole burst. A pass that
// failed is tried again with backoff; one that succeeded comes again after
// ResyncPeriod at the latest.
func (p *Publisher) next(ctx context.Context) bool {
	key, shutdown := p.queue.Get()
	if shutdown {
		return false
	}
	defer p.queue.Done(key)
	// This pass sees what a NotifyNow before it asked for.
	select {
	case <-p.now:
	default:
	}
	err := p.sync(ctx)
	switch {
	case ctx.Err() != nil:
		return false // stopping: what failed is not the API's or the driver's fault
	case err != nil:
		klog.FromContext(ctx).Error(err, "Publishing storage capacity failed, will retry")
		p.queue.AddRateLimited(key)
	default:
		p.queue.Forget(key)
		p.queue.AddAfter(key, p.cfg.ResyncPeriod)
	}
	wait := time.NewTimer(p.cfg.MinInterval)
	defer wait.Stop()
	select {
	case <-ctx.Done():
	case <-wait.C:
	case <-p.now:
		select {
		case <-ctx.Done():
		case <-time.After(p.cfg.NowInterval):
		}
	}
	return true
}

// Withdraw deletes what the agent of node published for driver in
// namespace, for an agent that no longer publishes: nothing would keep the
// objects true, and the placement duty goes on reading them.
func Withdraw(ctx context.Context, client kubernetes.Interface, namespace, driver, node string) error {
	api := client.StorageV1().CSIStorageCapacities(namespace)
	selector := labels.SelectorFromSet(Labels(driver, node))
	list, err := api.List(ctx, metav1.ListOptions{LabelSelector: selector.String()})
	if err != nil {
		return fmt.Errorf("listing the CSIStorageCapacity objects of node %s: %w", node, err)
	}
	var errs []error
	for _, o := range list.Items {
		deleted, err := Delete(ctx, client, &o)
		if deleted {
			klog.FromContext(ctx).V(2).Info("Withdrew storage capacity", "csiStorageCapacity", klog.KObj(&o), "storageClass", o.StorageClassName)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ManagedBy is the csi.storage.k8s.io/managed-by label value of node's
// objects: stickyvol-<node>, or, for a node name too long for a label value,
// its beginning and a hash of the whole.
func ManagedBy(node string) string {
	return labelValue("stickyvol-" + node)
}

// labelValue returns s if it fits in a label value, else its beginning and
// a hash of the whole, 63 characters in all. A node name is a valid label
// value (the driver checks it, since it is the topology value), so length is
// all that can be wrong with stickyvol-<node>.
func labelValue(s string) string {
	if len(s) <= validation.LabelValueMaxLength {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	hash := hex.EncodeToString(sum[:8])
	return s[:validation.LabelValueMaxLength-len(hash)-1] + "-" + hash
}
