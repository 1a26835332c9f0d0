package provisioner

import (
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/sets"
	corelisters "k8s.io/client-go/listers/core/v1"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

// Clones: a claim whose dataSource (or dataSourceRef) is another claim of
// the same namespace gets a copy of that claim's volume, made by the driver
// of the node that holds it (CreateVolume with a volume content source).
// A node-local volume can only be copied where it is, so the clone must be
// made on the source's node. A claim the scheduler placed on another node
// is not sent back to the scheduler: nothing tells the scheduler where the
// source is, and it would pick the same node again (it did, for the
// upstream suites' restores, every time). It stays selected to that node,
// with an event that names the source's node, and the copies duty of
// stickyvol controller (duties/copies.go) moves the selected-node
// annotation to the source's node when the claim's pods may run there. The
// scheduler's wait for the claim then fails, and it places the pod again:
// with the claim bound to a volume on the source's node, there.
//
// No cloning-protection finalizer on the source claim (external-provisioner
// puts one there while a clone is in progress): the clone is made within
// one CreateVolume call by the driver that owns the source, which holds the
// source volume's lock for the copy, so a DeleteVolume of the source in
// that time is answered Aborted and retried after the copy. Before the call
// the source may still go (its claim deleted, its PV reclaimed): then
// CreateVolume answers NotFound, no volume is made, and the claim is tried
// again and gets a Warning that says the source is gone. After the call the
// clone needs nothing of its source. So nothing the finalizer guards
// against can happen here, and a finalizer would only be one more thing to
// leave behind on a crash.
//
// Not required, unlike external-provisioner: the same StorageClass. The
// driver clones with the source's backend and refuses a class that says
// otherwise (another volumeType, fsType or pool) with a message that names
// both.

// CloneSourceName returns the name of the claim the claim clones, if its
// data source is a claim.
func CloneSourceName(claim *v1.PersistentVolumeClaim) (string, bool) {
	if ref := claim.Spec.DataSourceRef; ref != nil {
		return ref.Name, (ref.APIGroup == nil || *ref.APIGroup == "") && ref.Kind == "PersistentVolumeClaim" &&
			(ref.Namespace == nil || *ref.Namespace == claim.Namespace)
	}
	if ref := claim.Spec.DataSource; ref != nil {
		return ref.Name, (ref.APIGroup == nil || *ref.APIGroup == "") && ref.Kind == "PersistentVolumeClaim"
	}
	return "", false
}

// cloneMessages. They end in events on the clone's claim.
const (
	// waitSourceClaim is followed by the source claim's name and why.
	waitSourceClaim = "the claim clones claim %q, which %s; it is tried again until the source is bound"
	// refuseSourcePV is followed by the source claim's name and why.
	refuseSourcePV = "the claim clones claim %q, whose volume %s; stickyvol can only clone its own volumes of the same volumeMode"
	// elsewhereClone is followed by the source claim, its node, the node
	// selected and the source node again.
	elsewhereClone = "the claim clones %s, whose volume is on node %s: it can only be made there, not on %s. " +
		movesThere
	// movesThere ends the messages of copies selected to the wrong node;
	// it is followed by the source's node.
	movesThere = "stickyvol controller moves the claim there if its pods may run there; " +
		"if they may not, give them nodeAffinity to %s"
)

// LocateClone returns the PV of claim name in namespace, which a clone of it
// copies, or why there is none yet, in words for the cloning claim's events.
func LocateClone(claims corelisters.PersistentVolumeClaimLister, volumes corelisters.PersistentVolumeLister, namespace, name string) (
	*v1.PersistentVolume, error) {
	src, err := claims.PersistentVolumeClaims(namespace).Get(name)
	switch {
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf(waitSourceClaim, name, "does not exist in namespace "+namespace)
	case err != nil:
		return nil, fmt.Errorf("looking up claim %q, which the claim clones: %w", name, err)
	case src.Status.Phase != v1.ClaimBound || src.Spec.VolumeName == "":
		return nil, fmt.Errorf(waitSourceClaim, name, "is not bound to a volume")
	}
	pv, err := volumes.Get(src.Spec.VolumeName)
	if err != nil {
		return nil, fmt.Errorf(waitSourceClaim, name, fmt.Sprintf("is bound to volume %s, which cannot be found (%v)", src.Spec.VolumeName, err))
	}
	return pv, nil
}

// cloneSource looks up the volume the claim of opts clones, if any, and
// sets it as req's content source, with a size of at least the source's.
// A refusal that a retry cannot change is remembered (refusals).
func (p *Provisioner) cloneSource(opts controller.ProvisionOptions, req *csi.CreateVolumeRequest) (controller.ProvisioningState, error) {
	claim := opts.PVC
	name, ok := CloneSourceName(claim)
	if !ok {
		return controller.ProvisioningFinished, nil
	}
	if p.claims == nil || p.volumes == nil {
		return controller.ProvisioningFinished, fmt.Errorf("the claim clones claim %q, and this provisioner was set up without claim and volume listers", name)
	}
	pv, err := LocateClone(p.claims, p.volumes, claim.Namespace, name)
	if err != nil {
		return controller.ProvisioningFinished, err
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != p.driverName {
		p.refused.add(claim, opts.StorageClass)
		return controller.ProvisioningFinished, fmt.Errorf(refuseSourcePV, name, fmt.Sprintf("%s is not a %s volume", pv.Name, p.driverName))
	}
	if mode, want := volumeMode(pv.Spec.VolumeMode), volumeMode(claim.Spec.VolumeMode); mode != want {
		p.refused.add(claim, opts.StorageClass)
		return controller.ProvisioningFinished, fmt.Errorf(refuseSourcePV, name, fmt.Sprintf("%s has volumeMode %s and this claim asks for %s", pv.Name, mode, want))
	}
	nodes := p.nodesOf(pv)
	if !nodes.Has(p.nodeName) {
		return controller.ProvisioningFinished, fmt.Errorf(elsewhereClone, name, nodeList(nodes), p.nodeName, nodeList(nodes))
	}
	req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: pv.Spec.CSI.VolumeHandle}}}
	if size := pv.Spec.Capacity.Storage().Value(); size > req.CapacityRange.GetRequiredBytes() {
		if req.CapacityRange == nil {
			req.CapacityRange = &csi.CapacityRange{}
		}
		req.CapacityRange.RequiredBytes = size
	}
	return controller.ProvisioningFinished, nil
}

func volumeMode(m *v1.PersistentVolumeMode) v1.PersistentVolumeMode {
	if m == nil {
		return v1.PersistentVolumeFilesystem
	}
	return *m
}

func nodeList(nodes sets.Set[string]) string {
	if nodes.Len() == 1 {
		return sets.List(nodes)[0]
	}
	return fmt.Sprint(sets.List(nodes))
}
