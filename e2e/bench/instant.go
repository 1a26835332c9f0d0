package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/provisioner"
)

// The instant provisioner is the baseline stickyvol is measured against:
// the least any provisioner of WaitForFirstConsumer claims can do. The
// moment the scheduler's selected-node annotation appears on a claim of its
// StorageClass, it creates a PV pre-bound to the claim (claimRef with the
// claim's UID) with node affinity to that node; when such a PV is Released
// under reclaim policy Delete, it deletes it. It makes no volume, waits for
// no annotation of kube-controller-manager, writes no event and keeps no
// state but what it has already done. What is left of the time to Bound is
// the scheduler's, the PV controller's and the API server's.

// InstantConfig configures RunInstant.
type InstantConfig struct {
	Client kubernetes.Interface
	// StorageClass is the class whose claims it provisions.
	StorageClass string
	// Driver is the CSI driver its PVs name (with a CSIDriver object that
	// needs no attach) and the provisioned-by annotation they carry, which
	// tells the PV controller that deletion is left to this provisioner.
	Driver string
	// Workers is how many PVs are created or deleted at once.
	Workers int
	// Synced, when set, is called once the informers have synced; an
	// error from it ends the run.
	Synced func() error
}

// annProvisionedBy names the provisioner that made a PV.
const annProvisionedBy = "pv.kubernetes.io/provisioned-by"

// instantKey prefixes in the work queue: a claim to provision, a PV to
// delete.
const (
	claimKey = "claim/"
	pvKey    = "pv/"
)

type instant struct {
	cfg     InstantConfig
	reclaim v1.PersistentVolumeReclaimPolicy
	claims  corelisters.PersistentVolumeClaimLister
	pvs     corelisters.PersistentVolumeLister
	queue   workqueue.TypedRateLimitingInterface[string]
	// done holds the UIDs of the claims whose PV exists, so that the
	// claim's later updates (the controller-manager's annotation, the
	// bind) cost no request.
	done sync.Map
}

// RunInstant runs the instant provisioner until ctx is done.
func RunInstant(ctx context.Context, cfg InstantConfig) error {
	logger := klog.FromContext(ctx).WithName("instant")
	ctx = klog.NewContext(ctx, logger)
	if cfg.Workers < 1 {
		return errors.New("the instant provisioner needs at least one worker")
	}
	class, err := cfg.Client.StorageV1().StorageClasses().Get(ctx, cfg.StorageClass, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("StorageClass %s: %w", cfg.StorageClass, err)
	}
	p := &instant{cfg: cfg, reclaim: v1.PersistentVolumeReclaimDelete,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "instant"})}
	if class.ReclaimPolicy != nil {
		p.reclaim = *class.ReclaimPolicy
	}
	factory := informers.NewSharedInformerFactory(cfg.Client, 0)
	claims, pvs := factory.Core().V1().PersistentVolumeClaims(), factory.Core().V1().PersistentVolumes()
	p.claims, p.pvs = claims.Lister(), pvs.Lister()
	if _, err := claims.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.claimChanged(obj) },
		UpdateFunc: func(_, obj any) { p.claimChanged(obj) },
		DeleteFunc: func(obj any) { p.claimGone(obj) },
	}); err != nil {
		return err
	}
	if _, err := pvs.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.volumeChanged(obj) },
		UpdateFunc: func(_, obj any) { p.volumeChanged(obj) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	defer p.queue.ShutDown()
	if err := factory.WaitForCacheSyncWithContext(ctx).AsError(); err != nil {
		return fmt.Errorf("waiting for informers: %w", err)
	}
	logger.Info("Provisioning", "storageClass", cfg.StorageClass, "driver", cfg.Driver, "workers", cfg.Workers)
	if cfg.Synced != nil {
		if err := cfg.Synced(); err != nil {
			return err
		}
	}
	var workers sync.WaitGroup
	for range cfg.Workers {
		workers.Go(func() { p.work(ctx) })
	}
	<-ctx.Done()
	p.queue.ShutDown()
	workers.Wait()
	return nil
}

// wants says whether the claim is one to provision now: of the class,
// selected to a node, not bound, not yet done.
func (p *instant) wants(claim *v1.PersistentVolumeClaim) bool {
	if claim.Spec.StorageClassName == nil || *claim.Spec.StorageClassName != p.cfg.StorageClass ||
		claim.Spec.VolumeName != "" || claim.DeletionTimestamp != nil || provisioner.SelectedNode(claim) == "" {
		return false
	}
	_, done := p.done.Load(claim.UID)
	return !done
}

func (p *instant) claimChanged(obj any) {
	if claim, ok := obj.(*v1.PersistentVolumeClaim); ok && p.wants(claim) {
		p.queue.Add(claimKey + claim.Namespace + "/" + claim.Name)
	}
}

func (p *instant) claimGone(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	if claim, ok := obj.(*v1.PersistentVolumeClaim); ok {
		p.done.Delete(claim.UID)
	}
}

func (p *instant) volumeChanged(obj any) {
	if pv, ok := obj.(*v1.PersistentVolume); ok && p.releasedOurs(pv) {
		p.queue.Add(pvKey + pv.Name)
	}
}

// releasedOurs says whether pv is one of this provisioner's PVs that is
// Released under reclaim policy Delete, so to be deleted.
func (p *instant) releasedOurs(pv *v1.PersistentVolume) bool {
	return pv.Annotations[annProvisionedBy] == p.cfg.Driver && pv.Status.Phase == v1.VolumeReleased &&
		pv.Spec.PersistentVolumeReclaimPolicy == v1.PersistentVolumeReclaimDelete && pv.DeletionTimestamp == nil
}

func (p *instant) work(ctx context.Context) {
	logger := klog.FromContext(ctx)
	for {
		key, shutdown := p.queue.Get()
		if shutdown {
			return
		}
		if err := p.sync(ctx, key); err != nil {
			logger.Error(err, "Will retry", "key", key)
			p.queue.AddRateLimited(key)
		} else {
			p.queue.Forget(key)
		}
		p.queue.Done(key)
	}
}

func (p *instant) sync(ctx context.Context, key string) error {
	if name, ok := strings.CutPrefix(key, pvKey); ok {
		return p.deleteVolume(ctx, name)
	}
	ns, name, err := cache.SplitMetaNamespaceKey(strings.TrimPrefix(key, claimKey))
	if err != nil {
		return err
	}
	claim, err := p.claims.PersistentVolumeClaims(ns).Get(name)
	if apierrors.IsNotFound(err) || (err == nil && !p.wants(claim)) {
		return nil
	}
	if err != nil {
		return err
	}
	pv := instantPV(claim, p.cfg.Driver, p.reclaim)
	_, err = p.cfg.Client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	p.done.Store(claim.UID, true)
	klog.FromContext(ctx).V(2).Info("Created PV", "pvc", klog.KObj(claim), "pv", pv.Name, "node", provisioner.SelectedNode(claim))
	return nil
}

func (p *instant) deleteVolume(ctx context.Context, name string) error {
	pv, err := p.pvs.Get(name)
	if apierrors.IsNotFound(err) || (err == nil && !p.releasedOurs(pv)) {
		return nil
	}
	if err != nil {
		return err
	}
	err = p.cfg.Client.CoreV1().PersistentVolumes().Delete(ctx, name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &pv.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return err
	}
	klog.FromContext(ctx).V(2).Info("Deleted PV", "pv", name)
	return nil
}

// instantPV is the PV the instant provisioner makes for a claim selected to
// a node: named after the claim's UID (so a retry finds it), pre-bound to
// the claim, on that node only, of the claim's size and access modes.
func instantPV(claim *v1.PersistentVolumeClaim, driver string, reclaim v1.PersistentVolumeReclaimPolicy) *v1.PersistentVolume {
	name := "pvc-" + string(claim.UID)
	return &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{annProvisionedBy: driver},
		},
		Spec: v1.PersistentVolumeSpec{
			Capacity:                      v1.ResourceList{v1.ResourceStorage: claim.Spec.Resources.Requests[v1.ResourceStorage]},
			AccessModes:                   claim.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              *claim.Spec.StorageClassName,
			VolumeMode:                    claim.Spec.VolumeMode,
			ClaimRef: &v1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID,
			},
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{
				Driver: driver, VolumeHandle: name,
			}},
			NodeAffinity: nodeAffinity(v1.LabelHostname, provisioner.SelectedNode(claim)),
		},
	}
}

// nodeAffinity confines a PV to the node whose label key has the value node.
func nodeAffinity(key, node string) *v1.VolumeNodeAffinity {
	return &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
		MatchExpressions: []v1.NodeSelectorRequirement{{Key: key, Operator: v1.NodeSelectorOpIn, Values: []string{node}}},
	}}}}
}
