package provisioner

import (
	"context"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// The claim annotations kube-controller-manager's PV controller writes to
// hand a claim to an external provisioner. It writes both, with the same
// value; the provisioning library reads the first and falls back to the
// second.
const (
	AnnStorageProvisioner     = "volume.kubernetes.io/storage-provisioner"
	AnnBetaStorageProvisioner = "volume.beta.kubernetes.io/storage-provisioner"
)

// annotator writes the storage-provisioner annotations on the claims the
// scheduler selected for this node, instead of waiting for the PV
// controller to write them.
//
// Why: the provisioning library starts on a claim only once
// volume.kubernetes.io/storage-provisioner names the driver. The PV
// controller in kube-controller-manager writes it when its single claim
// worker gets to the claim after the scheduler's selected-node update; a busy
// controller-manager gets there seconds late, and that wait was most of the
// time from selected node to PV.
//
// When: exactly where the PV controller would write it and would do nothing
// else. The claim is Pending, has no volume and is not being deleted; its
// class is a WaitForFirstConsumer class of this driver; the scheduler has
// selected this node (volume.kubernetes.io/selected-node, the key the
// admission policy checks); no PV names the claim in its claimRef (the PV
// controller would bind that PV rather than provision); and neither
// annotation is there yet (a value already written, even another one, is
// never overwritten). For such a claim the PV controller's only move is to
// write these annotations and a Normal ExternalProvisioning event: the
// scheduler selects a node for provisioning only after finding no PV that
// fits. Immediate classes are left to the PV controller: it annotates those
// as soon as they are created, with no scheduler to wait for, and may bind
// an Available PV instead. A claim without a class is left to it too (it
// may give the claim the default class first).
//
// Why this is safe with the PV controller writing too:
//   - Both write the class's provisioner, which a StorageClass cannot change,
//     to both keys: there is only ever one value.
//   - Both Update at the resourceVersion they read, so whichever writes
//     second gets a Conflict and changes nothing. The PV controller retries
//     at its next sync of the claim; its setClaimProvisioner
//     (pkg/controller/volume/persistentvolume/pv_controller.go) returns
//     without a write when volume.kubernetes.io/storage-provisioner already
//     holds the provisioner it wants, and it goes on to its event as usual.
//     The annotator drops its write on a Conflict: the newer claim comes
//     through the informer and is looked at again, and nothing is left to do
//     once either annotation is there.
//   - The admission policy stickyvol-node-claims lets an agent update a
//     claim only while it is selected to the agent's node and stays so; the
//     write changes only the two annotations. RBAC has update on claims
//     already (the library's reschedule); there is no patch.
//
// A controller-manager run with --enable-dynamic-provisioning=false never
// writes the annotations; WaitForFirstConsumer claims of stickyvol are then
// provisioned by the agent alone.
type annotator struct {
	nodeName, driverName string
	client               kubernetes.Interface
	claims               corelisters.PersistentVolumeClaimLister
	classes              storagelisters.StorageClassLister
	pvs                  corelisters.PersistentVolumeLister
	queue                workqueue.TypedRateLimitingInterface[cache.ObjectName]
}

// newAnnotator registers a handler on the claim informer of cfg.Informers;
// run works the claims it queues.
func newAnnotator(cfg ControllerConfig) (*annotator, error) {
	claims := cfg.Informers.Core().V1().PersistentVolumeClaims()
	a := &annotator{
		nodeName:   cfg.Provisioner.NodeName,
		driverName: cfg.Provisioner.DriverName,
		client:     cfg.Client,
		claims:     claims.Lister(),
		classes:    cfg.Informers.Storage().V1().StorageClasses().Lister(),
		pvs:        cfg.Informers.Core().V1().PersistentVolumes().Lister(),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[cache.ObjectName](cfg.RetryIntervalStart, cfg.RetryIntervalMax),
			workqueue.TypedRateLimitingQueueConfig[cache.ObjectName]{Name: "storage-provisioner-annotation"}),
	}
	enqueue := func(obj any) {
		if claim, ok := obj.(*v1.PersistentVolumeClaim); ok && a.wanted(claim) {
			a.queue.Add(cache.MetaObjectToName(claim))
		}
	}
	_, err := claims.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	})
	return a, err
}

// wanted is the test on the claim alone, which every claim event of the
// cluster passes through; annotate checks the class and the PVs.
func (a *annotator) wanted(claim *v1.PersistentVolumeClaim) bool {
	_, ga := claim.Annotations[AnnStorageProvisioner]
	_, beta := claim.Annotations[AnnBetaStorageProvisioner]
	return !ga && !beta && claim.Annotations[AnnSelectedNode] == a.nodeName &&
		claim.Spec.VolumeName == "" && claim.Status.Phase == v1.ClaimPending && claim.DeletionTimestamp == nil &&
		claim.Spec.StorageClassName != nil && *claim.Spec.StorageClassName != ""
}

// run works the queue with the given number of workers until ctx is done.
func (a *annotator) run(ctx context.Context, workers int) {
	stop := context.AfterFunc(ctx, a.queue.ShutDown)
	defer stop()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for a.next(ctx) {
			}
		})
	}
	wg.Wait()
}

func (a *annotator) next(ctx context.Context) bool {
	name, shutdown := a.queue.Get()
	if shutdown {
		return false
	}
	defer a.queue.Done(name)
	if err := a.annotate(ctx, name); err != nil {
		klog.FromContext(ctx).V(2).Info("Writing the storage-provisioner annotation failed, will retry",
			"pvc", name, "err", err)
		a.queue.AddRateLimited(name)
		return true
	}
	a.queue.Forget(name)
	return true
}

// annotate writes the annotations on the claim if it still needs them. A
// Conflict or a claim gone is no error: the informer brings the claim's
// next version, if any, back to the queue.
func (a *annotator) annotate(ctx context.Context, name cache.ObjectName) error {
	claim, err := a.claims.PersistentVolumeClaims(name.Namespace).Get(name.Name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !a.wanted(claim) {
		return nil
	}
	class, err := a.classes.Get(*claim.Spec.StorageClassName)
	if apierrors.IsNotFound(err) {
		return nil // the class informer has no handler here; the PV controller still writes
	}
	if err != nil {
		return err
	}
	if !a.ofThisDriver(class) {
		return nil
	}
	if bound, err := a.namedByPV(claim); err != nil || bound {
		return err
	}
	claim = claim.DeepCopy()
	claim.Annotations[AnnStorageProvisioner] = class.Provisioner
	claim.Annotations[AnnBetaStorageProvisioner] = class.Provisioner
	start := time.Now()
	_, err = a.client.CoreV1().PersistentVolumeClaims(claim.Namespace).Update(ctx, claim, metav1.UpdateOptions{})
	switch {
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		klog.FromContext(ctx).V(4).Info("Claim changed before the storage-provisioner annotation was written", "pvc", name, "err", err)
		return nil
	case err != nil:
		return err
	}
	klog.FromContext(ctx).V(4).Info("Wrote the storage-provisioner annotation", "pvc", name, "duration", time.Since(start))
	return nil
}

// ofThisDriver tells whether the class is a WaitForFirstConsumer class of
// this driver.
func (a *annotator) ofThisDriver(class *storagev1.StorageClass) bool {
	return class.Provisioner == a.driverName &&
		class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer
}

// namedByPV tells whether a PV's claimRef names the claim (with its UID or
// none), as the PV controller matches a PV bound to a claim. The library's
// own PV for the claim is one of them: it is on its way to being bound.
func (a *annotator) namedByPV(claim *v1.PersistentVolumeClaim) (bool, error) {
	pvs, err := a.pvs.List(labels.Everything())
	if err != nil {
		return false, err
	}
	for _, pv := range pvs {
		ref := pv.Spec.ClaimRef
		if ref != nil && ref.Name == claim.Name && ref.Namespace == claim.Namespace && (ref.UID == "" || ref.UID == claim.UID) {
			return true, nil
		}
	}
	return false, nil
}
