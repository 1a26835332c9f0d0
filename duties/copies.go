package duties

import (
	"context"
	"errors"
	"fmt"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/provisioner"
)

// Copies is the cluster duty that takes a clone or a restore to the node
// of its source.
//
// A clone's or a restore's volume can only be made where its source lies,
// one node's disk, and the scheduler does not know that: it places the pod
// of a WaitForFirstConsumer claim where its own rules say, and may pick
// another node every time (with two nodes and the source's node the busier
// one, it does). The agent of that node refuses the claim and keeps it (the
// provisioner's clone.go says why it does not send it back). This duty then
// moves the claim's selected-node annotation to the source's node, if every
// pod that uses the claim may run there (its node selector and required
// node affinity match the Node, and it tolerates the Node's NoSchedule and
// NoExecute taints). The agent there makes the volume; the scheduler, which
// waits for the claim to be provisioned on the node it chose, sees the
// annotation change, gives up that choice and places the pod again, now
// where its bound volume is.
//
// A claim whose pods may not run on the source's node is left alone, with
// the agent's event that names the node: moving it would bind a volume no
// pod of it can use. So is one whose source's node was deleted, with an
// event of its own (SourceNodeGone): nothing can be copied from there.
type Copies struct {
	driverName, topologyKey string
	client                  kubernetes.Interface
	factories               []informers.SharedInformerFactory
	claimInformer           cache.SharedIndexInformer
	claims                  corelisters.PersistentVolumeClaimLister
	volumes                 corelisters.PersistentVolumeLister
	classes                 storagelisters.StorageClassLister
	nodes                   corelisters.NodeLister
	snapshots               provisioner.SnapshotReader
}

// CopiesConfig configures the copies duty.
type CopiesConfig struct {
	DriverName, TopologyKey string
	Client                  kubernetes.Interface
	// Informers is the cluster-wide factory, as for placement.
	Informers informers.SharedInformerFactory
	// Snapshots reads VolumeSnapshots; nil leaves restores alone.
	Snapshots provisioner.SnapshotReader
}

// NewCopies checks cfg and takes the informers it needs.
func NewCopies(cfg CopiesConfig) (*Copies, error) {
	if cfg.DriverName == "" || cfg.TopologyKey == "" || cfg.Client == nil || cfg.Informers == nil {
		return nil, errors.New("copies: driver name, topology key, client and informer factory are required")
	}
	f := cfg.Informers
	return &Copies{
		driverName: cfg.DriverName, topologyKey: cfg.TopologyKey, client: cfg.Client,
		factories:     []informers.SharedInformerFactory{f},
		claimInformer: f.Core().V1().PersistentVolumeClaims().Informer(),
		claims:        f.Core().V1().PersistentVolumeClaims().Lister(),
		volumes:       f.Core().V1().PersistentVolumes().Lister(),
		classes:       f.Storage().V1().StorageClasses().Lister(),
		nodes:         f.Core().V1().Nodes().Lister(),
		snapshots:     cfg.Snapshots,
	}, nil
}

// copiesTerm is one leadership term of the duty.
type copiesTerm struct {
	*Copies
	dutyTerm
}

// Run moves claims until ctx is done; call it while holding the Lease.
func (c *Copies) Run(ctx context.Context) error {
	return runTerm(ctx, "copies", c.client, c.factories, c.lead)
}

// lead runs one leadership term of the duty.
func (c *Copies) lead(ctx context.Context, dt dutyTerm) error {
	logger := klog.FromContext(ctx)
	tm := &copiesTerm{Copies: c, dutyTerm: dt}
	enqueue := func(obj any) {
		if claim, ok := obj.(*v1.PersistentVolumeClaim); ok && tm.isCopy(claim) {
			tm.queue.Add(cache.MetaObjectToName(claim).String())
		}
	}
	reg, err := c.claimInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	})
	if err != nil {
		return err
	}
	defer removeHandlers(logger, []handlerReg{{c.claimInformer, reg}})

	logger.Info("Taking clones and restores to their sources' nodes")
	tm.work(ctx, tm.sync)
	return nil
}

// isCopy tells whether the claim is an unbound clone or restore of a
// WaitForFirstConsumer class of this driver that a node was selected for.
func (tm *copiesTerm) isCopy(claim *v1.PersistentVolumeClaim) bool {
	if claim.Spec.VolumeName != "" || claim.DeletionTimestamp != nil || provisioner.SelectedNode(claim) == "" ||
		claim.Spec.StorageClassName == nil {
		return false
	}
	_, clone := provisioner.CloneSourceName(claim)
	_, restore := provisioner.SnapshotSourceName(claim)
	if !clone && !restore {
		return false
	}
	class, err := tm.classes.Get(*claim.Spec.StorageClassName)
	return err == nil && class.Provisioner == tm.driverName &&
		class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer
}

// sync moves one claim to its source's node if it is selected elsewhere and
// its pods may run there.
func (tm *copiesTerm) sync(ctx context.Context, key string) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	claim, err := tm.claims.PersistentVolumeClaims(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil || !tm.isCopy(claim) {
		return err
	}
	source, node, err := tm.sourceNode(ctx, claim)
	if err != nil || node == "" || node == provisioner.SelectedNode(claim) {
		return err // nothing to do yet, or already there
	}
	target, err := tm.nodes.Get(node)
	if apierrors.IsNotFound(err) {
		// The informer may lag behind a node that came back: ask the API.
		if target, err = tm.client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			tm.recorder.Eventf(claim, v1.EventTypeWarning, "SourceNodeGone",
				"the claim's source %s lies on node %s, which was deleted: no copy can be made of it unless the node "+
					"comes back with its disk; delete the claim, or give it another source", source, node)
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("node %s of the source of %s: %w", node, key, err)
	}
	pods, err := podsUsing(ctx, tm.client, claim)
	if err != nil {
		return err
	}
	if len(pods) == 0 {
		return errWaiting // a selected node without a pod: the scheduler is about to retry
	}
	for _, pod := range pods {
		if why := cannotRunOn(klog.FromContext(ctx), pod, target); why != "" {
			klog.FromContext(ctx).V(2).Info("Copy left on its selected node", "pvc", klog.KObj(claim), "sourceNode", node, "pod", klog.KObj(pod), "reason", why)
			return nil
		}
	}
	if err := selectNode(ctx, tm.client, claim, node); err != nil {
		return fmt.Errorf("moving %s to node %s: %w", key, node, err)
	}
	klog.FromContext(ctx).V(2).Info("Copy moved to its source's node", "pvc", klog.KObj(claim), "from", provisioner.SelectedNode(claim), "node", node)
	tm.recorder.Eventf(claim, v1.EventTypeNormal, "MovedToSource",
		"stickyvol moved this claim from node %s to node %s, where its source %s is: its volume can only be made there, and its pods follow it",
		provisioner.SelectedNode(claim), node, source)
	return nil
}

// sourceNode returns the claim's source, for people, and its node ("" when
// it cannot be told yet: the source is not bound or not ready).
func (tm *copiesTerm) sourceNode(ctx context.Context, claim *v1.PersistentVolumeClaim) (string, string, error) {
	if name, ok := provisioner.CloneSourceName(claim); ok {
		pv, err := provisioner.LocateClone(tm.claims, tm.volumes, claim.Namespace, name)
		if err != nil {
			return "", "", nil // not bound yet; the agent's event says why
		}
		if nodes := provisioner.NodesOf(pv, tm.topologyKey); nodes.Len() == 1 {
			return "claim " + name, nodes.UnsortedList()[0], nil
		}
		return "", "", nil
	}
	name, _ := provisioner.SnapshotSourceName(claim)
	if tm.snapshots == nil {
		return "", "", nil
	}
	_, node, err := provisioner.LocateSnapshot(ctx, tm.snapshots, tm.volumes, tm.topologyKey, claim.Namespace, name)
	if err != nil {
		return "", "", errWaiting // not ready yet; the agent's event says why
	}
	return "VolumeSnapshot " + name, node, nil
}

// cannotRunOn says why the pod may not run on node, or "" if it may, as far
// as the node's labels and taints tell: its nodeName, node selector and
// required node affinity, and its tolerations of NoSchedule and NoExecute
// taints.
func cannotRunOn(logger klog.Logger, pod *v1.Pod, node *v1.Node) string {
	if pod.Spec.NodeName != "" && pod.Spec.NodeName != node.Name {
		return "it runs on node " + pod.Spec.NodeName
	}
	if ok, err := nodeaffinity.GetRequiredNodeAffinity(pod).Match(node); err != nil || !ok {
		return "its node selector or required node affinity excludes the node"
	}
	_, untolerated := corev1helpers.FindMatchingUntoleratedTaint(logger, node.Spec.Taints, pod.Spec.Tolerations, func(t *v1.Taint) bool {
		return t.Effect == v1.TaintEffectNoSchedule || t.Effect == v1.TaintEffectNoExecute
	}, false)
	if untolerated {
		return "it does not tolerate the node's taints"
	}
	return ""
}
