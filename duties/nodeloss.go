package duties

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/capacity"
	"github.com/stickyvol/stickyvol/provisioner"
)

// provisionerFinalizer is the finalizer the provisioning library puts on
// every PV it makes and removes after the owning agent deleted the volume.
// With the node gone no agent will, so this duty removes it.
const provisionerFinalizer = "external-provisioner.volume.kubernetes.io/finalizer"

// rescanPeriod is how often NodeLoss looks for nodes that are gone without
// it having seen the deletion (a deletion during a change of leader).
const rescanPeriod = 5 * time.Minute

// NodeLossConfig configures the node-loss duty.
type NodeLossConfig struct {
	DriverName  string
	TopologyKey string
	Client      kubernetes.Interface
	// Informers is the cluster-wide factory (claims, PVs, Nodes, classes)
	// and CapacityInformers the one of the driver's namespace
	// (CSIStorageCapacity), both started by the caller for the life of the
	// process.
	Informers, CapacityInformers informers.SharedInformerFactory
}

// NodeLoss is the cluster duty that cleans up after a Node object is
// deleted: a node-local volume cannot outlive its node's disk, and no agent
// is left on that node to finish what the provisioning library began.
//
//   - A claim selected for the gone node that has no PV yet loses its
//     selected-node annotation, so the scheduler picks again.
//   - A PV of the gone node that no claim holds any more (Released, Failed,
//     or already being deleted) loses the library's finalizer and is
//     deleted: the disk went with the node.
//   - A claim Bound to a PV of the gone node is handled by its class'
//     nodeLossPolicy: Keep (the default) deletes nothing and says on the
//     claim and on its pods what happened and what to do; Recreate deletes
//     the claim and, once Pending, the pod that uses it, so a StatefulSet
//     makes both anew on a live node (the old PV is then Released and
//     deleted as above).
//   - The CSIStorageCapacity objects whose nodeTopology names the gone node
//     are deleted: their agent is gone, and the DaemonSet that owns them is
//     not.
//
// Only a Node object that is gone counts, confirmed by a GET: a node that is
// NotReady, cordoned or unreachable is never acted on, since its disk may
// come back with it.
type NodeLoss struct {
	client               kubernetes.Interface
	factories            []informers.SharedInformerFactory
	claimInformer, pvInf cache.SharedIndexInformer
	nodeInformer         cache.SharedIndexInformer
	capacityInformer     cache.SharedIndexInformer
	nodes                corelisters.NodeLister
	claims               corelisters.PersistentVolumeClaimLister
	classes              storagelisters.StorageClassLister
	// volumeNodes and capacityNodes are the PV and CSIStorageCapacity
	// index functions: the nodes an object of the driver names.
	volumeNodes, capacityNodes cache.IndexFunc
}

// NewNodeLoss checks cfg and takes the informers it needs from the factory.
func NewNodeLoss(cfg NodeLossConfig) (*NodeLoss, error) {
	if cfg.DriverName == "" || cfg.TopologyKey == "" || cfg.Client == nil || cfg.Informers == nil || cfg.CapacityInformers == nil {
		return nil, errors.New("node loss: driver name, topology key, client and informer factories are required")
	}
	f := cfg.Informers
	n := &NodeLoss{
		client:           cfg.Client,
		factories:        []informers.SharedInformerFactory{f, cfg.CapacityInformers},
		claimInformer:    f.Core().V1().PersistentVolumeClaims().Informer(),
		pvInf:            f.Core().V1().PersistentVolumes().Informer(),
		nodeInformer:     f.Core().V1().Nodes().Informer(),
		capacityInformer: cfg.CapacityInformers.Storage().V1().CSIStorageCapacities().Informer(),
		nodes:            f.Core().V1().Nodes().Lister(),
		claims:           f.Core().V1().PersistentVolumeClaims().Lister(),
		classes:          f.Storage().V1().StorageClasses().Lister(),
		volumeNodes:      volumesByNode(cfg.DriverName, cfg.TopologyKey),
		capacityNodes:    capacitiesByNode(cfg.TopologyKey),
	}
	f.Storage().V1().StorageClasses().Informer() // registered with the factory, for the lister
	if err := addIndex(n.pvInf, n.volumeNodes); err != nil {
		return nil, err
	}
	if err := addIndex(n.capacityInformer, n.capacityNodes); err != nil {
		return nil, err
	}
	if err := addIndex(n.claimInformer, pendingClaimsByNode(cfg.DriverName)); err != nil {
		return nil, err
	}
	return n, nil
}

// Run handles gone nodes until ctx is done; call it while holding the Lease.
func (n *NodeLoss) Run(ctx context.Context) error {
	return runTerm(ctx, "nodeloss", n.client, n.factories, n.lead)
}

// lead runs one leadership term of the duty.
func (n *NodeLoss) lead(ctx context.Context, dt dutyTerm) error {
	w := &nodeLossWork{NodeLoss: n, dutyTerm: dt}
	reg, err := n.nodeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: func(obj any) {
			if node, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
				w.queue.Add(node)
			}
		},
	})
	if err != nil {
		return err
	}
	defer func() { _ = n.nodeInformer.RemoveEventHandler(reg) }()
	// A PV of a gone node that changes (Released once the claim the duty
	// deleted is gone) is looked at again at once, and so is a
	// CSIStorageCapacity object that names a gone node (published by an
	// agent that ran on after its Node object was deleted).
	pvReg, err := n.pvInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) { w.queueGoneNodes(n.volumeNodes, obj) },
	})
	if err != nil {
		return err
	}
	defer func() { _ = n.pvInf.RemoveEventHandler(pvReg) }()
	capacityReg, err := n.capacityInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.queueGoneNodes(n.capacityNodes, obj) },
		UpdateFunc: func(_, obj any) { w.queueGoneNodes(n.capacityNodes, obj) },
	})
	if err != nil {
		return err
	}
	defer func() { _ = n.capacityInformer.RemoveEventHandler(capacityReg) }()

	var rescans sync.WaitGroup
	rescans.Go(func() { wait.UntilWithContext(ctx, w.rescan, rescanPeriod) })
	w.work(ctx, w.sync)
	rescans.Wait()
	return nil
}

// nodeLossWork is one leadership term of the duty.
type nodeLossWork struct {
	*NodeLoss
	dutyTerm
}

// queueGoneNodes queues the nodes that obj names by index, and that have
// no Node object.
func (w *nodeLossWork) queueGoneNodes(index cache.IndexFunc, obj any) {
	nodes, err := index(obj)
	if err != nil {
		return
	}
	for _, node := range nodes {
		if _, err := w.nodes.Get(node); apierrors.IsNotFound(err) {
			w.queue.Add(node)
		}
	}
}

// rescan queues every node that stickyvol volumes, pending claims or
// CSIStorageCapacity objects name and that has no Node object.
func (w *nodeLossWork) rescan(context.Context) {
	named := map[string]bool{}
	for _, inf := range []cache.SharedIndexInformer{w.pvInf, w.claimInformer, w.capacityInformer} {
		for _, node := range inf.GetIndexer().ListIndexFuncValues(nodeIndex) {
			named[node] = true
		}
	}
	for node := range named {
		if _, err := w.nodes.Get(node); apierrors.IsNotFound(err) {
			w.queue.Add(node)
		}
	}
}

// sync handles what a gone node left behind. It returns errWaiting while
// something is left that a later pass will handle.
func (w *nodeLossWork) sync(ctx context.Context, node string) error {
	// The informer may lag behind a node that came back: ask the API.
	_, err := w.client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err == nil {
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return err
	}
	logger := klog.FromContext(ctx).WithValues("node", node)
	ctx = klog.NewContext(ctx, logger)
	var errs []error
	pending, err := w.claimInformer.GetIndexer().ByIndex(nodeIndex, node)
	if err != nil {
		return err
	}
	for _, obj := range pending {
		if claim, ok := obj.(*v1.PersistentVolumeClaim); ok {
			errs = append(errs, w.unselect(ctx, claim, node))
		}
	}
	volumes, err := w.pvInf.GetIndexer().ByIndex(nodeIndex, node)
	if err != nil {
		return err
	}
	for _, obj := range volumes {
		if pv, ok := obj.(*v1.PersistentVolume); ok {
			errs = append(errs, w.volumeGone(ctx, pv, node))
		}
	}
	capacities, err := w.capacityInformer.GetIndexer().ByIndex(nodeIndex, node)
	if err != nil {
		return err
	}
	for _, obj := range capacities {
		if c, ok := obj.(*storagev1.CSIStorageCapacity); ok {
			errs = append(errs, w.deleteCapacity(ctx, c))
		}
	}
	return errors.Join(errs...)
}

// deleteCapacity deletes a CSIStorageCapacity object of a gone node: no
// agent is left to keep it true, and the scheduler would count the room of
// a node that is not there.
func (w *nodeLossWork) deleteCapacity(ctx context.Context, c *storagev1.CSIStorageCapacity) error {
	deleted, err := capacity.Delete(ctx, w.client, c)
	if deleted {
		klog.FromContext(ctx).V(2).Info("Deleted the storage capacity of a gone node", "csiStorageCapacity", klog.KObj(c),
			"storageClass", c.StorageClassName)
	}
	return err
}

// capacitiesByNode indexes CSIStorageCapacity objects by the node their
// nodeTopology names with topologyKey, as the agents publish them.
func capacitiesByNode(topologyKey string) cache.IndexFunc {
	return func(obj any) ([]string, error) {
		c, ok := obj.(*storagev1.CSIStorageCapacity)
		if !ok || c.NodeTopology == nil || c.NodeTopology.MatchLabels[topologyKey] == "" {
			return nil, nil
		}
		return []string{c.NodeTopology.MatchLabels[topologyKey]}, nil
	}
}

// unselect removes the selected-node annotation of a claim that has no PV,
// conditioned on the claim's resourceVersion.
func (w *nodeLossWork) unselect(ctx context.Context, claim *v1.PersistentVolumeClaim, node string) error {
	if claim.Spec.VolumeName != "" || provisioner.SelectedNode(claim) != node {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": claim.ResourceVersion,
		"annotations":     map[string]any{provisioner.AnnSelectedNode: nil},
	}})
	if err != nil {
		return err
	}
	_, err = w.client.CoreV1().PersistentVolumeClaims(claim.Namespace).Patch(ctx, claim.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("removing the selected node of claim %s: %w", klog.KObj(claim), err)
	}
	klog.FromContext(ctx).Info("Claim selected for a gone node goes back to the scheduler", "pvc", klog.KObj(claim))
	w.recorder.Eventf(claim, v1.EventTypeNormal, "NodeGone",
		"Node %s was deleted before this claim's volume was made there; the scheduler picks a node again", node)
	return nil
}

// volumeGone handles one PV of a gone node.
func (w *nodeLossWork) volumeGone(ctx context.Context, pv *v1.PersistentVolume, node string) error {
	var claim *v1.PersistentVolumeClaim
	if ref := pv.Spec.ClaimRef; ref != nil && pv.DeletionTimestamp == nil {
		c, err := w.claims.PersistentVolumeClaims(ref.Namespace).Get(ref.Name)
		switch {
		case err == nil && c.UID == ref.UID:
			claim = c
		case err != nil && !apierrors.IsNotFound(err):
			return err
		}
	}
	if claim == nil || claim.Spec.VolumeName != pv.Name {
		// No claim holds it any more, or it was made for a claim that is
		// not bound to it yet and, without its node, never will be (that
		// claim is sent back to the scheduler by unselect).
		return w.deleteVolume(ctx, pv, node)
	}
	if w.policy(pv) == provisioner.NodeLossRecreate {
		return w.recreate(ctx, claim, node)
	}
	w.keep(ctx, claim, node)
	return nil
}

// policy returns the nodeLossPolicy of the PV's class (Keep when unknown).
func (w *nodeLossWork) policy(pv *v1.PersistentVolume) string {
	class, err := w.classes.Get(pv.Spec.StorageClassName)
	if err != nil {
		return provisioner.NodeLossKeep
	}
	return PolicyOf(class)
}

// PolicyOf returns a class' nodeLossPolicy: Keep unless it says Recreate.
func PolicyOf(class *storagev1.StorageClass) string {
	if class.Parameters[provisioner.ParamNodeLossPolicy] == provisioner.NodeLossRecreate {
		return provisioner.NodeLossRecreate
	}
	return provisioner.NodeLossKeep
}

// deleteVolume removes the library's finalizer from a PV of a gone node and
// deletes it.
func (w *nodeLossWork) deleteVolume(ctx context.Context, pv *v1.PersistentVolume, node string) error {
	pvs := w.client.CoreV1().PersistentVolumes()
	if i := slices.Index(pv.Finalizers, provisionerFinalizer); i >= 0 {
		finalizers := slices.Delete(slices.Clone(pv.Finalizers), i, i+1)
		patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
			"resourceVersion": pv.ResourceVersion,
			"finalizers":      finalizers,
		}})
		if err != nil {
			return err
		}
		if _, err := pvs.Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("removing the finalizer of PV %s: %w", pv.Name, err)
		}
	}
	if pv.DeletionTimestamp == nil {
		uid := pv.UID
		err := pvs.Delete(ctx, pv.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting PV %s: %w", pv.Name, err)
		}
	}
	klog.FromContext(ctx).Info("Deleted a PV of a gone node", "pv", pv.Name)
	w.recorder.Eventf(pv, v1.EventTypeWarning, "NodeGone",
		"Node %s was deleted, and this volume's data with its disk; no claim holds the PV, so it is deleted", node)
	return nil
}

// keep leaves a Bound claim of a gone node as it is and says so, on the
// claim and on the pods waiting for it.
func (w *nodeLossWork) keep(ctx context.Context, claim *v1.PersistentVolumeClaim, node string) {
	msg := fmt.Sprintf("Node %s, which held this claim's volume, was deleted: its pods cannot run anywhere else. "+
		"Nothing is deleted (nodeLossPolicy Keep). If the node comes back with its disk, they run again; "+
		"to start over with an empty volume on another node, delete the claim and its pod (a StatefulSet makes "+
		"both anew), or set nodeLossPolicy: Recreate on the StorageClass", node)
	klog.FromContext(ctx).V(2).Info("Claim of a gone node kept (nodeLossPolicy Keep)", "pvc", klog.KObj(claim))
	w.recorder.Event(claim, v1.EventTypeWarning, "NodeGone", msg)
	pods, err := podsUsing(ctx, w.client, claim)
	if err != nil {
		klog.FromContext(ctx).Error(err, "Listing the pods of a claim on a gone node", "pvc", klog.KObj(claim))
		return
	}
	for _, pod := range pods {
		if pod.Status.Phase == v1.PodPending {
			w.recorder.Event(pod, v1.EventTypeWarning, "NodeGone", msg)
		}
	}
}

// recreate deletes a Bound claim of a gone node and, once Pending, the pods
// that use it, so that their StatefulSet makes both anew. It returns
// errWaiting: until the claim is gone, the node is looked at again (a pod
// that uses the claim may not be Pending yet, being removed from the gone
// node; the PV is deleted once the claim is gone).
func (w *nodeLossWork) recreate(ctx context.Context, claim *v1.PersistentVolumeClaim, node string) error {
	logger := klog.FromContext(ctx)
	pods, err := podsUsing(ctx, w.client, claim)
	if err != nil {
		return err
	}
	if claim.DeletionTimestamp == nil {
		uid := claim.UID
		err := w.client.CoreV1().PersistentVolumeClaims(claim.Namespace).Delete(ctx, claim.Name,
			metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting claim %s: %w", klog.KObj(claim), err)
		}
		logger.Info("Deleted a claim of a gone node (nodeLossPolicy Recreate)", "pvc", klog.KObj(claim))
		msg := fmt.Sprintf("Node %s, which held the volume of claim %s, was deleted; nodeLossPolicy Recreate: the claim "+
			"is deleted, and its pod once Pending, so that a StatefulSet makes both anew on a live node with an empty volume",
			node, claim.Name)
		w.recorder.Event(claim, v1.EventTypeWarning, "NodeGone", msg)
		for _, owner := range statefulSetsOf(pods) {
			w.recorder.Event(owner, v1.EventTypeWarning, "NodeGone", msg)
		}
	}
	for _, pod := range pods {
		if pod.DeletionTimestamp != nil || pod.Status.Phase != v1.PodPending ||
			pod.Spec.NodeName != "" && pod.Spec.NodeName != node {
			continue // gone already, or not Pending yet: a later pass
		}
		uid := pod.UID
		err := w.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name,
			metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting pod %s: %w", klog.KObj(pod), err)
		}
		logger.Info("Deleted a Pending pod of a claim of a gone node", "pod", klog.KObj(pod), "pvc", klog.KObj(claim))
		msg := fmt.Sprintf("Pod %s used claim %s, whose volume was on deleted node %s; nodeLossPolicy Recreate "+
			"deleted both so that they are made anew on a live node", pod.Name, claim.Name, node)
		w.recorder.Event(pod, v1.EventTypeWarning, "NodeGone", msg)
	}
	return errWaiting
}

// statefulSetsOf returns the StatefulSets that own the pods, once each.
func statefulSetsOf(pods []*v1.Pod) []*v1.ObjectReference {
	var refs []*v1.ObjectReference
	seen := map[types.UID]bool{}
	for _, pod := range pods {
		if owner := metav1.GetControllerOf(pod); owner != nil && owner.Kind == "StatefulSet" && !seen[owner.UID] {
			seen[owner.UID] = true
			refs = append(refs, &v1.ObjectReference{Kind: owner.Kind, APIVersion: owner.APIVersion, Name: owner.Name,
				Namespace: pod.Namespace, UID: owner.UID})
		}
	}
	return refs
}
