package duties

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclientset "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/provisioner"
	"github.com/stickyvol/stickyvol/snapshotter"
)

// contentFinalizer is the finalizer the snapshot-controller puts on every
// VolumeSnapshotContent it binds. The node's snapshotter (the upstream
// sidecar controller) removes it once DeleteSnapshot has removed the
// snapshot; with the node gone, nothing would.
const contentFinalizer = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"

// LostSnapshotsConfig configures the lost-snapshots duty.
type LostSnapshotsConfig struct {
	DriverName string
	Client     kubernetes.Interface
	Snapshots  snapclientset.Interface
	// Informers is the cluster-wide factory (Nodes), started by the caller.
	Informers informers.SharedInformerFactory
	// CRDInterval is how often a term looks for the snapshot API while it
	// is missing; zero is snapshotter.DefaultCRDInterval.
	CRDInterval time.Duration
}

// LostSnapshots is the cluster duty that lets the snapshots of a deleted
// node be deleted. Each snapshot lives on one node's disk, and only that
// node's agent deletes it and then removes its content's finalizer. With
// the Node object gone, a VolumeSnapshot deleted afterwards (or one that
// was being made when the node went) would stay Terminating for ever. So a
// VolumeSnapshotContent of this driver that is being deleted, and whose node
// (its snapshot.storage.kubernetes.io/managed-by label) has no Node object,
// confirmed by a GET, loses the finalizer, with an event that says why.
//
// Contents that nobody deletes are left as they are, as nodeLossPolicy Keep
// leaves claims: if the node comes back with its disk, its snapshots are
// there. One deleted meanwhile leaves its data on that disk, as a PV
// deleted after its node did.
type LostSnapshots struct {
	driverName  string
	client      kubernetes.Interface
	snapshots   snapclientset.Interface
	factories   []informers.SharedInformerFactory
	nodeInf     cache.SharedIndexInformer
	nodes       corelisters.NodeLister
	crdInterval time.Duration
}

// NewLostSnapshots checks cfg and takes the informers it needs.
func NewLostSnapshots(cfg LostSnapshotsConfig) (*LostSnapshots, error) {
	if cfg.DriverName == "" || cfg.Client == nil || cfg.Snapshots == nil || cfg.Informers == nil {
		return nil, errors.New("lost snapshots: driver name, both clients and the informer factory are required")
	}
	if cfg.CRDInterval <= 0 {
		cfg.CRDInterval = snapshotter.DefaultCRDInterval
	}
	f := cfg.Informers
	return &LostSnapshots{
		driverName: cfg.DriverName, client: cfg.Client, snapshots: cfg.Snapshots,
		factories:   []informers.SharedInformerFactory{f},
		nodeInf:     f.Core().V1().Nodes().Informer(),
		nodes:       f.Core().V1().Nodes().Lister(),
		crdInterval: cfg.CRDInterval,
	}, nil
}

// lostSnapshotsTerm is one leadership term of the duty.
type lostSnapshotsTerm struct {
	*LostSnapshots
	dutyTerm
	contents cache.SharedIndexInformer
}

// Run lets the deleted snapshots of gone nodes go until ctx is done; call it
// while holding the Lease. It first waits for the snapshot API.
func (l *LostSnapshots) Run(ctx context.Context) error {
	return runTerm(ctx, "lostsnapshots", l.client, l.factories, l.lead)
}

// lead runs one leadership term of the duty.
func (l *LostSnapshots) lead(ctx context.Context, dt dutyTerm) error {
	if err := snapshotter.WaitForAPI(ctx, l.snapshots.Discovery(), l.crdInterval); err != nil {
		return nil // the term ended first
	}
	// Only contents with a node: the snapshot-controller labels the
	// dynamic ones, agents the pre-provisioned ones they hold. The resync
	// looks at each again, as NodeLoss's rescan does, in case a node's
	// deletion fell between two terms.
	factory := snapinformers.NewSharedInformerFactoryWithOptions(l.snapshots, rescanPeriod,
		snapinformers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = provisioner.ManagedByLabel }))
	tm := &lostSnapshotsTerm{
		LostSnapshots: l,
		dutyTerm:      dt,
		contents:      factory.Snapshot().V1().VolumeSnapshotContents().Informer(),
	}
	if err := addIndex(tm.contents, contentsByNode); err != nil {
		return err
	}
	enqueue := func(obj any) {
		if c, ok := obj.(*snapv1.VolumeSnapshotContent); ok && tm.isLost(c) {
			tm.queue.Add(c.Name)
		}
	}
	if _, err := tm.contents.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		return err
	}
	nodeReg, err := l.nodeInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: func(obj any) {
			node, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
			if err != nil {
				return
			}
			contents, _ := tm.contents.GetIndexer().ByIndex(nodeIndex, node)
			for _, obj := range contents {
				enqueue(obj)
			}
		},
	})
	if err != nil {
		return err
	}
	defer removeHandlers(klog.FromContext(ctx), []handlerReg{{l.nodeInf, nodeReg}})
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), tm.contents.HasSynced) {
		return nil // the term ended first
	}
	klog.FromContext(ctx).Info("Letting the deleted snapshots of gone nodes go")
	tm.work(ctx, tm.sync)
	return nil
}

// contentsByNode indexes contents by their managed-by label.
func contentsByNode(obj any) ([]string, error) {
	c, ok := obj.(*snapv1.VolumeSnapshotContent)
	if !ok || c.Labels[provisioner.ManagedByLabel] == "" {
		return nil, nil
	}
	return []string{c.Labels[provisioner.ManagedByLabel]}, nil
}

// isLost tells, from the caches, whether a content is this driver's, is
// being deleted, still has the finalizer, and names a node with no Node
// object.
func (tm *lostSnapshotsTerm) isLost(c *snapv1.VolumeSnapshotContent) bool {
	node := c.Labels[provisioner.ManagedByLabel]
	if c.Spec.Driver != tm.driverName || c.DeletionTimestamp == nil || node == "" ||
		!slices.Contains(c.Finalizers, contentFinalizer) {
		return false
	}
	_, err := tm.nodes.Get(node)
	return apierrors.IsNotFound(err)
}

// sync removes the finalizer of one lost content, conditioned on the
// content's resourceVersion, once the API confirms that its node is gone.
func (tm *lostSnapshotsTerm) sync(ctx context.Context, name string) error {
	obj, exists, err := tm.contents.GetIndexer().GetByKey(name)
	if err != nil || !exists {
		return err
	}
	c, ok := obj.(*snapv1.VolumeSnapshotContent)
	if !ok || !tm.isLost(c) {
		return nil
	}
	node := c.Labels[provisioner.ManagedByLabel]
	// The informer may lag behind a node that came back: ask the API.
	if _, err := tm.client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		return err
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": c.ResourceVersion,
		"finalizers":      slices.DeleteFunc(slices.Clone(c.Finalizers), func(f string) bool { return f == contentFinalizer }),
	}})
	if err != nil {
		return err
	}
	_, err = tm.snapshots.SnapshotV1().VolumeSnapshotContents().Patch(ctx, c.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("removing the finalizer of VolumeSnapshotContent %s: %w", c.Name, err)
	}
	klog.FromContext(ctx).Info("Let the deleted snapshot of a gone node go", "volumeSnapshotContent", c.Name, "node", node)
	ref := &v1.ObjectReference{APIVersion: snapv1.SchemeGroupVersion.String(), Kind: "VolumeSnapshotContent", Name: c.Name, UID: c.UID}
	tm.recorder.Eventf(ref, v1.EventTypeWarning, "NodeGone",
		"Node %s, which held this snapshot, was deleted and no agent is left to delete the snapshot: "+
			"its finalizer is removed so that the deletion completes (if the node comes back with its disk, "+
			"the snapshot's data stays there)", node)
	return nil
}
