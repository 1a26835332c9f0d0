package provisioner

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclientset "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

// Restores: a claim whose dataSource (or dataSourceRef) is a VolumeSnapshot
// of its namespace gets a volume made from that snapshot, by the driver of
// the node that holds it (CreateVolume with a snapshot content source).
//
// The snapshot is found as external-provisioner finds it: the
// VolumeSnapshot must be ready and bound to a VolumeSnapshotContent of this
// driver, whose status carries the driver's snapshot ID. A snapshot of a
// node-local volume lies on that volume's node, which the snapshot-controller
// (run with --enable-distributed-snapshotting) writes into the content's
// managed-by label; a content without it (one made by hand) is looked for
// on the node of its source volume's PV. As for clones, a claim selected to
// another node is not made there; it gets an event that names the
// snapshot's node, and the controller's copies duty moves it there.
//
// No finalizer is put on the VolumeSnapshot while the volume is made: the
// snapshot-controller itself keeps a snapshot that an unbound claim names
// from being deleted (volumesnapshot-as-source-protection), and the copy
// happens within one CreateVolume call.
//
// The objects are read with GETs, not watched: a restore is rare, and a
// cache of every snapshot of the cluster on every node would cost memory
// each agent pays all the time.

// ManagedByLabel is the label the snapshot-controller, with distributed
// snapshotting, puts on a VolumeSnapshotContent: the node whose agent
// makes and deletes the snapshot.
const ManagedByLabel = "snapshot.storage.kubernetes.io/managed-by"

// SnapshotReader reads the VolumeSnapshot objects a restore needs.
type SnapshotReader interface {
	VolumeSnapshot(ctx context.Context, namespace, name string) (*snapv1.VolumeSnapshot, error)
	VolumeSnapshotContent(ctx context.Context, name string) (*snapv1.VolumeSnapshotContent, error)
}

// restoreMessages. They end in events on the claim.
const (
	// waitSnapshot is followed by the snapshot's name and why.
	waitSnapshot = "the claim restores VolumeSnapshot %q, which %s; it is tried again until the snapshot is ready"
	// refuseSnapshot is followed by the snapshot's name and why.
	refuseSnapshot = "the claim restores VolumeSnapshot %q, which %s; stickyvol restores only its own snapshots"
	// elsewhereRestore is followed by the snapshot, its node, the node
	// selected and the snapshot's node again.
	elsewhereRestore = "the claim restores VolumeSnapshot %s, which is on node %s: it can only be made there, not on %s. " +
		movesThere
)

// SnapshotSourceName returns the name of the VolumeSnapshot the claim
// restores, if its data source is one in its own namespace.
func SnapshotSourceName(claim *v1.PersistentVolumeClaim) (string, bool) {
	const group = "snapshot.storage.k8s.io"
	if ref := claim.Spec.DataSourceRef; ref != nil {
		return ref.Name, ref.APIGroup != nil && *ref.APIGroup == group && ref.Kind == "VolumeSnapshot" &&
			(ref.Namespace == nil || *ref.Namespace == claim.Namespace)
	}
	if ref := claim.Spec.DataSource; ref != nil {
		return ref.Name, ref.APIGroup != nil && *ref.APIGroup == group && ref.Kind == "VolumeSnapshot"
	}
	return "", false
}

// snapshotSource looks up the snapshot the claim of opts restores, if any,
// and sets it as req's content source, with a size of at least the
// snapshot's restore size.
func (p *Provisioner) snapshotSource(ctx context.Context, opts controller.ProvisionOptions, req *csi.CreateVolumeRequest) (controller.ProvisioningState, error) {
	claim := opts.PVC
	name, ok := SnapshotSourceName(claim)
	if !ok {
		return controller.ProvisioningFinished, nil
	}
	if p.snapshots == nil {
		p.refused.add(claim, opts.StorageClass)
		return controller.ProvisioningFinished, fmt.Errorf(refuseSnapshot, name, "cannot be read: this agent runs with --snapshots=false")
	}
	content, node, err := LocateSnapshot(ctx, p.snapshots, p.volumes, p.topologyKey, claim.Namespace, name)
	if err != nil {
		return controller.ProvisioningFinished, err
	}
	if content.Spec.Driver != p.driverName {
		p.refused.add(claim, opts.StorageClass)
		return controller.ProvisioningFinished, fmt.Errorf(refuseSnapshot, name, "was made by driver "+content.Spec.Driver)
	}
	if node != "" && node != p.nodeName {
		return controller.ProvisioningFinished, fmt.Errorf(elsewhereRestore, name, node, p.nodeName, node)
	}
	req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: *content.Status.SnapshotHandle}}}
	if size := content.Status.RestoreSize; size != nil && *size > req.CapacityRange.GetRequiredBytes() {
		if req.CapacityRange == nil {
			req.CapacityRange = &csi.CapacityRange{}
		}
		req.CapacityRange.RequiredBytes = *size
	}
	return controller.ProvisioningFinished, nil
}

// LocateSnapshot returns the ready content of VolumeSnapshot name and the
// node that holds its snapshot ("" when that cannot be told: then the
// driver of the node asked answers NotFound if it lacks the snapshot), or
// an error that says what a restore waits for.
func LocateSnapshot(ctx context.Context, r SnapshotReader, volumes corelisters.PersistentVolumeLister, topologyKey, namespace, name string) (
	*snapv1.VolumeSnapshotContent, string, error) {
	content, err := boundContent(ctx, r, namespace, name)
	if err != nil {
		return nil, "", err
	}
	node := content.Labels[ManagedByLabel]
	if node == "" {
		node = sourceNode(content, volumes, topologyKey)
	}
	return content, node, nil
}

// boundContent returns the ready content of VolumeSnapshot name, or an
// error that says what the claim waits for.
func boundContent(ctx context.Context, r SnapshotReader, namespace, name string) (*snapv1.VolumeSnapshotContent, error) {
	snap, err := r.VolumeSnapshot(ctx, namespace, name)
	switch {
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf(waitSnapshot, name, "does not exist in namespace "+namespace)
	case err != nil:
		return nil, fmt.Errorf("looking up VolumeSnapshot %q, which the claim restores: %w", name, err)
	case snap.Status == nil || snap.Status.BoundVolumeSnapshotContentName == nil:
		return nil, fmt.Errorf(waitSnapshot, name, "is not bound to a VolumeSnapshotContent yet")
	case snap.Status.ReadyToUse == nil || !*snap.Status.ReadyToUse:
		return nil, fmt.Errorf(waitSnapshot, name, "is not ready to use")
	}
	content, err := r.VolumeSnapshotContent(ctx, *snap.Status.BoundVolumeSnapshotContentName)
	switch {
	case err != nil:
		return nil, fmt.Errorf(waitSnapshot, name, fmt.Sprintf("is bound to VolumeSnapshotContent %s, which cannot be read (%v)",
			*snap.Status.BoundVolumeSnapshotContentName, err))
	case content.Status == nil || content.Status.SnapshotHandle == nil:
		return nil, fmt.Errorf(waitSnapshot, name, "has no snapshot handle yet")
	}
	return content, nil
}

// sourceNode returns the node of the PV the content was taken of, or "" if
// that cannot be told.
func sourceNode(content *snapv1.VolumeSnapshotContent, volumes corelisters.PersistentVolumeLister, topologyKey string) string {
	handle := content.Spec.Source.VolumeHandle
	if handle == nil || volumes == nil {
		return ""
	}
	// The library names a PV as the volume it holds (the volume ID is the
	// PV name it asked for).
	pv, err := volumes.Get(*handle)
	if err != nil || pv.Spec.CSI == nil || pv.Spec.CSI.VolumeHandle != *handle {
		return ""
	}
	if nodes := NodesOf(pv, topologyKey); nodes.Len() == 1 {
		return nodeList(nodes)
	}
	return ""
}

// ClientSnapshots returns a SnapshotReader that GETs from the API server.
func ClientSnapshots(c snapclientset.Interface) SnapshotReader { return clientSnapshots{c} }

type clientSnapshots struct{ c snapclientset.Interface }

func (r clientSnapshots) VolumeSnapshot(ctx context.Context, namespace, name string) (*snapv1.VolumeSnapshot, error) {
	return r.c.SnapshotV1().VolumeSnapshots(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (r clientSnapshots) VolumeSnapshotContent(ctx context.Context, name string) (*snapv1.VolumeSnapshotContent, error) {
	return r.c.SnapshotV1().VolumeSnapshotContents().Get(ctx, name, metav1.GetOptions{})
}
