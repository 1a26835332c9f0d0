package provisioner

import (
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
)

// The claim annotations kube-controller-manager's PV controller writes to
// hand a claim to an external provisioner. It writes both, with the same
// value; the provisioning library reads the first and falls back to the
// second.
const (
	AnnStorageProvisioner     = "volume.kubernetes.io/storage-provisioner"
	AnnBetaStorageProvisioner = "volume.beta.kubernetes.io/storage-provisioner"
)

// handOver lets the provisioning library start on a claim the scheduler
// selected for this node without waiting for the PV controller to hand it
// over.
//
// Why: the library provisions a claim only once
// volume.kubernetes.io/storage-provisioner names the driver. The PV
// controller in kube-controller-manager writes it when its single claim
// worker gets to the claim after the scheduler's selected-node update; a busy
// controller-manager gets there seconds late, and that wait was most of the
// time from selected node to PV.
//
// How: the library reads claims from the shared informer through a view
// (claimView) that shows those claims with the annotations the PV
// controller is about to write; the cache keeps the claims as they are, and
// nothing is written to the API server. The view decides when the library
// reads the claim, so a class the cache did not hold yet when the claim
// came in (an agent starting) is found then.
// An earlier version wrote the annotations itself, racing the PV
// controller for the same claim version: whichever came second got a
// Conflict, and when that was the PV controller it recorded a Warning
// ProvisioningFailed event ("Error saving claim: ... the object has been
// modified") on a claim that was being provisioned just fine. The PV
// controller still writes the annotations, off the critical path; its
// setClaimProvisioner (pkg/controller/volume/persistentvolume/
// pv_controller.go) writes the class's provisioner, the value shown here.
// Should the agent update such a claim itself (the library's reschedule,
// which removes selected-node), the annotations go along, with the same
// value, which the PV controller then finds there and leaves.
//
// When: exactly where the PV controller would write them and do nothing
// else. The claim is Pending, has no volume and is not being deleted; its
// class is a WaitForFirstConsumer class of this driver; the scheduler
// selected this node; and neither annotation is there yet (a value already
// written, even another one, is shown as it is). The scheduler selects a
// node for provisioning only after its volume binding found no PV for the
// claim, a PV pre-bound to it included, so provisioning is what the PV
// controller would do. Immediate classes are left to the PV controller: it
// annotates those as soon as they are created, with no scheduler to wait
// for, and may bind an Available PV instead. A claim without a class is
// left to it too (it may give the claim the default class first).
//
// A controller-manager run with --enable-dynamic-provisioning=false never
// writes the annotations; WaitForFirstConsumer claims of stickyvol are then
// provisioned by the agent alone.
type handOver struct {
	nodeName, driverName string
	classes              storagelisters.StorageClassLister
}

// view returns obj as the library should see it: for a claim handed over,
// a copy with the annotations; anything else as it is.
func (h *handOver) view(obj any) any {
	claim, ok := obj.(*v1.PersistentVolumeClaim)
	if !ok || !h.wanted(claim) {
		return obj
	}
	class, err := h.classes.Get(*claim.Spec.StorageClassName)
	if err != nil || !h.ofThisDriver(class) {
		return obj
	}
	claim = claim.DeepCopy()
	claim.Annotations[AnnStorageProvisioner] = class.Provisioner
	claim.Annotations[AnnBetaStorageProvisioner] = class.Provisioner
	return claim
}

// wanted is the test on the claim alone, which every claim event of the
// cluster passes through before the class is looked up.
func (h *handOver) wanted(claim *v1.PersistentVolumeClaim) bool {
	_, ga := claim.Annotations[AnnStorageProvisioner]
	_, beta := claim.Annotations[AnnBetaStorageProvisioner]
	return !ga && !beta && claim.Annotations[AnnSelectedNode] == h.nodeName &&
		claim.Spec.VolumeName == "" && claim.Status.Phase == v1.ClaimPending && claim.DeletionTimestamp == nil &&
		claim.Spec.StorageClassName != nil && *claim.Spec.StorageClassName != ""
}

// ofThisDriver tells whether the class is a WaitForFirstConsumer class of
// this driver.
func (h *handOver) ofThisDriver(class *storagev1.StorageClass) bool {
	return class.Provisioner == h.driverName &&
		class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer
}

// claimView is the claim informer as the library gets it: the shared one,
// whose indexer shows claims through handOver.view. The library reads
// claims only through the indexer (by its UID index); its handlers queue
// keys, and its own writes go to the shared store.
type claimView struct {
	cache.SharedIndexInformer
	h *handOver
}

func (v claimView) GetIndexer() cache.Indexer {
	return viewIndexer{Indexer: v.SharedIndexInformer.GetIndexer(), h: v.h}
}

type viewIndexer struct {
	cache.Indexer
	h *handOver
}

func (x viewIndexer) ByIndex(index, value string) ([]any, error) {
	objs, err := x.Indexer.ByIndex(index, value)
	return x.all(objs), err
}

func (x viewIndexer) List() []any { return x.all(x.Indexer.List()) }

func (x viewIndexer) Get(obj any) (any, bool, error) {
	item, exists, err := x.Indexer.Get(obj)
	return x.h.view(item), exists, err
}

func (x viewIndexer) GetByKey(key string) (any, bool, error) {
	item, exists, err := x.Indexer.GetByKey(key)
	return x.h.view(item), exists, err
}

// all views objs in place: the slices the indexer returns are new ones.
func (x viewIndexer) all(objs []any) []any {
	for i, o := range objs {
		objs[i] = x.h.view(o)
	}
	return objs
}
