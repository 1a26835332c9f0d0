package resizer

import (
	"context"
	"encoding/json"
	"fmt"
	"math"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/provisioner"
)

// annSelectedNode is the annotation the admission policy reads to let an
// agent write a claim's status.
const annSelectedNode = provisioner.AnnSelectedNode

// Event reasons, those of external-resizer, which users and tools know.
const (
	reasonResizing       = "Resizing"
	reasonResizeFailed   = "VolumeResizeFailed"
	reasonResizeSuccess  = "VolumeResizeSuccessful"
	reasonNodeResizeNext = "FileSystemResizeRequired"
)

// maxBytes is the largest size CSI can carry (int64 bytes).
var maxBytes = resource.NewQuantity(math.MaxInt64, resource.BinarySI)

// sync grows the claim's volume if the claim is this node's and asks for
// more; see the package documentation. An error means "try again later".
func (r *Resizer) sync(ctx context.Context, name cache.ObjectName) error {
	claim, err := r.claims.PersistentVolumeClaims(name.Namespace).Get(name.Name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	pv, err := r.ownPV(claim)
	if pv == nil || err != nil {
		return err
	}
	logger := klog.FromContext(ctx).WithValues("pvc", klog.KObj(claim), "volumeID", pv.Spec.CSI.VolumeHandle)
	ctx = klog.NewContext(ctx, logger)
	if _, work := plan(claim, false); !work {
		return nil
	}
	if !r.expandable(ctx, claim) {
		return nil
	}
	if node := claim.Annotations[annSelectedNode]; node != r.cfg.NodeName {
		r.recorder.Eventf(claim, v1.EventTypeWarning, reasonResizeFailed,
			"Cannot expand volume %s: the claim's annotation %s is %q, not this node %s, so the agent of the node may not write the claim's status",
			pv.Name, annSelectedNode, node, r.cfg.NodeName)
		return nil
	}
	// The cache may not have the resizer's own last write yet: act on the
	// claim as the API server has it.
	claim, err = r.cfg.Client.CoreV1().PersistentVolumeClaims(name.Namespace).Get(ctx, name.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if claim.UID != pv.Spec.ClaimRef.UID || claim.Spec.VolumeName != pv.Name {
		return nil
	}
	target, work := plan(claim, r.isSettled(claim.UID))
	if !work {
		return nil
	}
	return r.grow(ctx, claim, pv, target)
}

// ownPV returns the claim's PV if it is a volume of this node's driver bound
// to this claim, or nil.
func (r *Resizer) ownPV(claim *v1.PersistentVolumeClaim) (*v1.PersistentVolume, error) {
	if claim.Status.Phase != v1.ClaimBound || claim.Spec.VolumeName == "" || claim.DeletionTimestamp != nil {
		return nil, nil
	}
	pv, err := r.pvs.Get(claim.Spec.VolumeName)
	if apierrors.IsNotFound(err) {
		// Not in the cache yet: the PV's own event brings the claim back.
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != r.cfg.DriverName || pv.Spec.ClaimRef == nil ||
		pv.Spec.ClaimRef.UID != claim.UID {
		return nil, nil
	}
	if nodes := provisioner.NodesOf(pv, r.cfg.TopologyKey); nodes.Len() != 1 || !nodes.Has(r.cfg.NodeName) {
		return nil, nil
	}
	return pv, nil
}

// expandable reports whether the claim's class allows expansion. The API
// server refuses a larger request otherwise; a claim that grew before its
// class stopped allowing it is left as it is.
func (r *Resizer) expandable(ctx context.Context, claim *v1.PersistentVolumeClaim) bool {
	name := ""
	if claim.Spec.StorageClassName != nil {
		name = *claim.Spec.StorageClassName
	}
	class, err := r.classes.Get(name)
	if err != nil || class.AllowVolumeExpansion == nil || !*class.AllowVolumeExpansion {
		klog.FromContext(ctx).V(4).Info("Not growing the volume: its StorageClass does not allow expansion", "class", name)
		return false
	}
	return true
}

// plan says whether the claim needs a ControllerExpandVolume and to what
// size. settled says that the driver refused the last try outright, so the
// size recorded in allocatedResources need not be asked for again.
func plan(claim *v1.PersistentVolumeClaim, settled bool) (target resource.Quantity, work bool) {
	want, have := claim.Spec.Resources.Requests[v1.ResourceStorage], claim.Status.Capacity[v1.ResourceStorage]
	allocated, recorded := claim.Status.AllocatedResources[v1.ResourceStorage]
	switch claim.Status.AllocatedResourceStatuses[v1.ResourceStorage] {
	case "":
		return want, want.Cmp(have) > 0
	case v1.PersistentVolumeClaimControllerResizeInProgress:
		// A try that did not end cleanly (a timeout, the agent stopped)
		// may still be under way in the driver: finish it before asking
		// for anything else.
		if recorded && !settled {
			return allocated, true
		}
		return want, true
	case v1.PersistentVolumeClaimControllerResizeInfeasible:
		// Waits for the user to ask for another size (a smaller one
		// recovers from the failure).
		return want, !recorded || want.Cmp(allocated) != 0
	default:
		// NodeResizePending and the others: kubelet's part.
		return resource.Quantity{}, false
	}
}

// grow marks the claim, calls ControllerExpandVolume and records the result
// on the PV and the claim.
func (r *Resizer) grow(ctx context.Context, claim *v1.PersistentVolumeClaim, pv *v1.PersistentVolume, target resource.Quantity) error {
	logger := klog.FromContext(ctx)
	marked, err := r.writeStatus(ctx, claim, withResizing(claim, target))
	if err != nil {
		return fmt.Errorf("marking the claim resizing: %w", err)
	}
	if marked != claim {
		have := claim.Status.Capacity[v1.ResourceStorage]
		logger.V(2).Info("Growing volume", "from", have.String(), "to", target.String())
		r.recorder.Eventf(claim, v1.EventTypeNormal, reasonResizing, "Expanding volume %s from %s to %s",
			pv.Name, have.String(), target.String())
	}
	claim = marked
	if target.Cmp(*maxBytes) > 0 {
		return r.failed(ctx, claim, pv, target,
			status.Errorf(codes.OutOfRange, "%s is more than a volume can have (2^63-1 bytes)", target.String()))
	}

	callCtx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	resp, err := r.cfg.ControllerClient.ControllerExpandVolume(callCtx, &csi.ControllerExpandVolumeRequest{
		VolumeId:      pv.Spec.CSI.VolumeHandle,
		CapacityRange: &csi.CapacityRange{RequiredBytes: target.Value()},
	})
	if err != nil {
		if ctx.Err() != nil {
			// The agent is stopping; the claim's status says where to
			// go on from.
			return ctx.Err()
		}
		return r.failed(ctx, claim, pv, target, err)
	}
	r.setSettled(claim.UID, false)
	size := target
	if b := resp.GetCapacityBytes(); b > 0 {
		size = *resource.NewQuantity(b, resource.BinarySI)
	}
	if size.Cmp(target) < 0 {
		return fmt.Errorf("the driver expanded volume %s to %s, less than the %s asked for", pv.Name, size.String(), target.String())
	}
	if err := r.setPVCapacity(ctx, pv, size); err != nil {
		return err
	}
	if resp.GetNodeExpansionRequired() {
		if _, err := r.writeStatus(ctx, claim, withNodeResizePending(claim)); err != nil {
			return fmt.Errorf("recording that the volume waits for kubelet: %w", err)
		}
		r.recorder.Eventf(claim, v1.EventTypeNormal, reasonNodeResizeNext, "Volume %s needs kubelet to finish its expansion on the node", pv.Name)
		return nil
	}
	if _, err := r.writeStatus(ctx, claim, withResized(claim, size)); err != nil {
		return fmt.Errorf("recording the new size on the claim: %w", err)
	}
	logger.V(2).Info("Volume grown", "capacity", size.String())
	r.recorder.Eventf(claim, v1.EventTypeNormal, reasonResizeSuccess, "Volume %s is now %s", pv.Name, size.String())
	if want := claim.Spec.Resources.Requests[v1.ResourceStorage]; want.Cmp(size) > 0 {
		// The request grew while an earlier size was being finished: the
		// next round starts now, not at the next resync.
		r.enqueue(claim)
	}
	return nil
}

// failed reports a failed ControllerExpandVolume on the claim. nil means
// that only the user can change the outcome (the claim is marked
// infeasible); an error has the claim tried again with backoff.
func (r *Resizer) failed(ctx context.Context, claim *v1.PersistentVolumeClaim, pv *v1.PersistentVolume, target resource.Quantity, err error) error {
	msg := status.Convert(err).Message()
	final := infeasible(err)
	r.setSettled(claim.UID, refused(err))
	what := "trying again later"
	if final {
		what = "change the claim's request to try again"
	}
	r.recorder.Eventf(claim, v1.EventTypeWarning, reasonResizeFailed, "Expanding volume %s to %s failed: %s; %s",
		pv.Name, target.String(), msg, what)
	if _, werr := r.writeStatus(ctx, claim, withFailure(claim, msg, final)); werr != nil {
		klog.FromContext(ctx).Error(werr, "Recording the failure on the claim")
		return err
	}
	if final {
		klog.FromContext(ctx).V(2).Info("Volume cannot grow to the requested size", "requested", target.String(), "err", err)
		return nil
	}
	return err
}

// infeasible reports the driver's answers that no retry of the same request
// can change: a size or capability it never takes, a volume it does not have.
func infeasible(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.OutOfRange, codes.NotFound:
		return true
	}
	return false
}

// refused reports whether the driver answered the call and did nothing: any
// gRPC code but those for a call that may have been cut short or may still
// be running (a timeout, a broken connection, a volume busy with an
// earlier call).
func refused(err error) bool {
	s, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch s.Code() {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.Aborted, codes.Unknown:
		return false
	}
	return true
}

// setPVCapacity raises the PV's spec.capacity to size; it never lowers it.
func (r *Resizer) setPVCapacity(ctx context.Context, pv *v1.PersistentVolume, size resource.Quantity) error {
	if have := pv.Spec.Capacity[v1.ResourceStorage]; have.Cmp(size) >= 0 {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"capacity": v1.ResourceList{v1.ResourceStorage: size}}})
	if err != nil {
		return err
	}
	if _, err := r.cfg.Client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("recording the new size on PV %s: %w", pv.Name, err)
	}
	return nil
}

// writeStatus writes changed's status and annotations with the claim's
// version, unless they are the claim's own; it returns the claim as it then
// is.
func (r *Resizer) writeStatus(ctx context.Context, claim, changed *v1.PersistentVolumeClaim) (*v1.PersistentVolumeClaim, error) {
	if sameStatus(claim, changed) {
		return claim, nil
	}
	return r.cfg.Client.CoreV1().PersistentVolumeClaims(claim.Namespace).UpdateStatus(ctx, changed, metav1.UpdateOptions{})
}
