package duties

import (
	"context"
	"errors"
	"fmt"
	"sync"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/provisioner"
)

// annStorageProvisioner is set by the PV controller on claims it expects an
// external provisioner to serve.
const annStorageProvisioner = "volume.kubernetes.io/storage-provisioner"

// nodeIndex indexes PVs and pending claims by the node they are (to be) on.
const nodeIndex = "stickyvol.dev/node"

// PlacementConfig configures the placement duty.
type PlacementConfig struct {
	DriverName  string
	TopologyKey string
	Client      kubernetes.Interface
	// Informers is the cluster-wide factory and CapacityInformers one
	// limited to the namespace where the driver's CSIStorageCapacity
	// objects are published (stickyvol's own, all the RBAC role grants).
	// NewPlacement takes its informers from them; the caller starts both
	// for the life of the process, so that a new leader starts with warm
	// caches and a lost lease does not stop informers other parts share.
	Informers, CapacityInformers informers.SharedInformerFactory
}

// Placement is the cluster duty that chooses a node for claims of
// Immediate-binding stickyvol classes. The scheduler picks the node only for
// WaitForFirstConsumer classes; an Immediate claim is provisioned before any
// pod exists, so somebody else must pick, and exactly one somebody: run it
// under a Lease (RunLeaderElected).
//
// A node qualifies when it is Ready and schedulable, its kubelet registered
// the driver (its CSINode lists it), it satisfies the class' allowedTopologies,
// and it has room: the CSIStorageCapacity objects for the class and node say
// so, or there are none (room unknown). Among those the node with the fewest
// stickyvol volumes wins, counting PVs, pending claims already placed on it,
// and claims placed by this duty that the cache does not show yet, so a burst
// of claims spreads out. A node that sent a claim back (ResourceExhausted) is
// not chosen for that claim again until all nodes did.
//
// The choice is written as the claim's selected-node annotation, with the
// claim's resourceVersion as precondition: a claim that changed meanwhile, or
// that a former leader placed, is not placed twice.
type Placement struct {
	driverName string
	client     kubernetes.Interface
	factories  []informers.SharedInformerFactory
	informers  informerSet
	claims     corelisters.PersistentVolumeClaimLister
	classes    storagelisters.StorageClassLister
	nodes      corelisters.NodeLister
	csiNodes   storagelisters.CSINodeLister
	capacities storagelisters.CSIStorageCapacityLister
}

// informerSet lists the informers placement uses, for sync and handlers.
type informerSet struct {
	claims, volumes, nodes, csiNodes, capacities, classes cache.SharedIndexInformer
}

// NewPlacement checks cfg, takes the informers it needs from the factories
// and indexes PVs and pending claims by node.
func NewPlacement(cfg PlacementConfig) (*Placement, error) {
	if cfg.DriverName == "" || cfg.TopologyKey == "" || cfg.Client == nil || cfg.Informers == nil || cfg.CapacityInformers == nil {
		return nil, errors.New("placement: driver name, topology key, client and informer factories are required")
	}
	f, cf := cfg.Informers, cfg.CapacityInformers
	p := &Placement{
		driverName: cfg.DriverName,
		client:     cfg.Client,
		factories:  []informers.SharedInformerFactory{f, cf},
		informers: informerSet{
			claims:     f.Core().V1().PersistentVolumeClaims().Informer(),
			volumes:    f.Core().V1().PersistentVolumes().Informer(),
			nodes:      f.Core().V1().Nodes().Informer(),
			csiNodes:   f.Storage().V1().CSINodes().Informer(),
			capacities: cf.Storage().V1().CSIStorageCapacities().Informer(),
			classes:    f.Storage().V1().StorageClasses().Informer(),
		},
		claims:     f.Core().V1().PersistentVolumeClaims().Lister(),
		classes:    f.Storage().V1().StorageClasses().Lister(),
		nodes:      f.Core().V1().Nodes().Lister(),
		csiNodes:   f.Storage().V1().CSINodes().Lister(),
		capacities: cf.Storage().V1().CSIStorageCapacities().Lister(),
	}
	if err := addIndex(p.informers.volumes, volumesByNode(cfg.DriverName, cfg.TopologyKey)); err != nil {
		return nil, err
	}
	if err := addIndex(p.informers.claims, pendingClaimsByNode(cfg.DriverName)); err != nil {
		return nil, err
	}
	return p, nil
}

// term is the state of one leadership term of the duty.
type term struct {
	*Placement
	dutyTerm

	mu      sync.Mutex
	assumed map[string]string           // claim key -> node placed this term
	refused map[string]sets.Set[string] // claim key -> nodes that sent it back
}

// Run places claims until ctx is done; call it while holding the Lease.
func (p *Placement) Run(ctx context.Context) error {
	return runTerm(ctx, "placement", p.client, p.factories, p.lead)
}

// lead runs one leadership term of the duty.
func (p *Placement) lead(ctx context.Context, dt dutyTerm) error {
	logger := klog.FromContext(ctx)
	tm := &term{
		Placement: p,
		dutyTerm:  dt,
		assumed:   map[string]string{},
		refused:   map[string]sets.Set[string]{},
	}
	regs, err := tm.addHandlers(logger)
	defer removeHandlers(logger, regs)
	if err != nil {
		return err
	}

	logger.Info("Placing claims of Immediate-binding classes")
	// One worker: placements are decided one after another against the
	// counts the previous ones left, which is what spreads a burst.
	tm.work(ctx, tm.sync)
	logger.Info("Stopped placing claims")
	return nil
}

// volumesByNode indexes the driver's PVs by the node their affinity names.
func volumesByNode(driver, topologyKey string) cache.IndexFunc {
	return func(obj any) ([]string, error) {
		pv, ok := obj.(*v1.PersistentVolume)
		if !ok || pv.Spec.CSI == nil || pv.Spec.CSI.Driver != driver {
			return nil, nil
		}
		return provisioner.NodesOf(pv, topologyKey).UnsortedList(), nil
	}
}

// pendingClaimsByNode indexes the driver's claims that have no PV yet by
// their selected node.
func pendingClaimsByNode(driver string) cache.IndexFunc {
	return func(obj any) ([]string, error) {
		claim, ok := obj.(*v1.PersistentVolumeClaim)
		if !ok || claim.Spec.VolumeName != "" || claim.Annotations[annStorageProvisioner] != driver {
			return nil, nil
		}
		if node := provisioner.SelectedNode(claim); node != "" {
			return []string{node}, nil
		}
		return nil, nil
	}
}

// addIndex adds the node index unless an earlier term, or the other duty on
// the same informer, already did.
func addIndex(inf cache.SharedIndexInformer, fn cache.IndexFunc) error {
	if _, ok := inf.GetIndexer().GetIndexers()[nodeIndex]; ok {
		return nil
	}
	if err := inf.AddIndexers(cache.Indexers{nodeIndex: fn}); err != nil {
		return fmt.Errorf("placement: adding index: %w", err)
	}
	return nil
}

// sync places one claim if it still needs a node.
func (tm *term) sync(ctx context.Context, key string) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil // not a key this duty made; nothing to retry
	}
	claim, err := tm.claims.PersistentVolumeClaims(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		tm.forget(key)
		return nil
	}
	if err != nil {
		return err
	}
	class := tm.classToPlace(claim)
	if class == nil {
		return nil
	}
	node, err := tm.choose(key, claim, class)
	if err != nil {
		tm.recorder.Event(claim, v1.EventTypeWarning, "PlacementFailed", err.Error())
		return err
	}
	if err := selectNode(ctx, tm.client, claim, node); err != nil {
		return fmt.Errorf("setting the selected node of %s: %w", key, err)
	}
	tm.mu.Lock()
	tm.assumed[key] = node
	tm.mu.Unlock()
	klog.FromContext(ctx).V(2).Info("Claim placed", "pvc", klog.KObj(claim), "node", node)
	tm.recorder.Eventf(claim, v1.EventTypeNormal, "Placed",
		"stickyvol chose node %s for this claim (Immediate binding: no pod to follow, so the node with the fewest volumes that has room)", node)
	return nil
}

// classToPlace returns the claim's class when the claim waits for this duty:
// unbound, no node chosen, not being deleted, of an Immediate class served by
// this driver.
func (tm *term) classToPlace(claim *v1.PersistentVolumeClaim) *storagev1.StorageClass {
	if claim.Spec.VolumeName != "" || provisioner.SelectedNode(claim) != "" || claim.DeletionTimestamp != nil ||
		claim.Spec.StorageClassName == nil || *claim.Spec.StorageClassName == "" {
		return nil
	}
	class, err := tm.classes.Get(*claim.Spec.StorageClassName)
	if err != nil || class.Provisioner != tm.driverName {
		return nil
	}
	if class.VolumeBindingMode != nil && *class.VolumeBindingMode != storagev1.VolumeBindingImmediate {
		return nil
	}
	return class
}

// choose returns the node for the claim, or an error that says why there is
// none.
func (tm *term) choose(key string, claim *v1.PersistentVolumeClaim, class *storagev1.StorageClass) (string, error) {
	nodes, err := tm.nodes.List(labels.Everything())
	if err != nil {
		return "", err
	}
	capacities, err := tm.capacities.List(labels.Everything())
	if err != nil {
		return "", err
	}
	size := claim.Spec.Resources.Requests.Storage().Value()
	var candidates []nodeLoad
	for _, node := range nodes {
		csiNode, _ := tm.csiNodes.Get(node.Name) // missing: not registered
		if !nodeUsable(node, csiNode, tm.driverName) || !allowedByClass(node, class) {
			continue
		}
		fits, known := roomFor(node, class.Name, size, capacities)
		if !fits {
			continue
		}
		candidates = append(candidates, nodeLoad{name: node.Name, load: tm.load(node.Name), known: known})
	}

	tm.mu.Lock()
	refused := tm.refused[key]
	tm.mu.Unlock()
	if node, ok := pickNode(candidates, refused); ok {
		return node, nil
	}
	if len(candidates) == 0 {
		return "", fmt.Errorf("no node can take this claim: stickyvol needs a Ready, schedulable node where " +
			"the driver is registered (listed in its CSINode), allowed by the StorageClass and with room for it")
	}
	// Every candidate sent the claim back; try them all again, after the
	// backoff this error causes.
	tm.mu.Lock()
	delete(tm.refused, key)
	tm.mu.Unlock()
	return "", fmt.Errorf("every node that could take this claim (%d) reported it has no room; trying again later", len(candidates))
}

// load counts the node's stickyvol PVs, its pending placed claims, and the
// claims placed this term that the cache does not show placed yet.
func (tm *term) load(node string) int {
	pvs, _ := tm.informers.volumes.GetIndexer().ByIndex(nodeIndex, node)
	pending, _ := tm.informers.claims.GetIndexer().ByIndex(nodeIndex, node)
	n := len(pvs) + len(pending)
	tm.mu.Lock()
	defer tm.mu.Unlock()
	for key, assumedNode := range tm.assumed {
		if assumedNode != node {
			continue
		}
		namespace, name, _ := cache.SplitMetaNamespaceKey(key)
		claim, err := tm.claims.PersistentVolumeClaims(namespace).Get(name)
		if err != nil || provisioner.SelectedNode(claim) != "" || claim.Spec.VolumeName != "" {
			delete(tm.assumed, key) // the cache caught up (or the claim is gone)
			continue
		}
		n++
	}
	return n
}

func (tm *term) forget(key string) {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	delete(tm.assumed, key)
	delete(tm.refused, key)
}
