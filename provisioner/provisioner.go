// Package provisioner creates and deletes stickyvol volumes for
// PersistentVolumeClaims. It implements the Provisioner, Qualifier and
// BlockProvisioner interfaces of sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller
// and talks to the node's CSI driver only through a csi.ControllerClient, so it
// works the same against the in-process driver and a remote socket.
//
// One instance runs on every node. Each instance only provisions the claims
// that the scheduler (or, for Immediate binding, the leader-elected placement
// duty of package duties) selected for its own node, and only deletes volumes
// whose node affinity names its own node: the disk is local, so no other node
// could do the work.
package provisioner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/sets"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

// Claim annotations the provisioner reads.
const (
	// AnnSelectedNode is set on a claim by the scheduler (WaitForFirstConsumer)
	// or by the placement duty (Immediate) to the node that must host the
	// volume.
	AnnSelectedNode = "volume.kubernetes.io/selected-node"
	// annAlphaSelectedNode is the Kubernetes 1.11 name of AnnSelectedNode. The
	// library still falls back to it when it fills ProvisionOptions, so
	// ShouldProvision does too.
	annAlphaSelectedNode = "volume.alpha.kubernetes.io/selected-node"
)

// Keys of the CreateVolume parameters that carry claim and volume names, as
// external-provisioner sends them with --extra-create-metadata. The driver
// treats every key under csi.storage.k8s.io/ as metadata.
const (
	ParamPVCName      = "csi.storage.k8s.io/pvc/name"
	ParamPVCNamespace = "csi.storage.k8s.io/pvc/namespace"
	ParamPVName       = "csi.storage.k8s.io/pv/name"
)

// ParamNodeLossPolicy is the StorageClass parameter that says what the
// node-loss duty (package duties) does with a Bound claim whose node is
// deleted: "Keep" (the default) or "Recreate". It is the provisioner's and
// the duty's, not the driver's: checked here and not sent in CreateVolume.
const ParamNodeLossPolicy = "nodeLossPolicy"

// Values of ParamNodeLossPolicy.
const (
	NodeLossKeep     = "Keep"
	NodeLossRecreate = "Recreate"
)

// DefaultTimeout bounds one CreateVolume or DeleteVolume call when
// Config.Timeout is zero. The driver makes a directory and writes a small
// record, so a call that takes longer is stuck, and its DeadlineExceeded
// makes the library try again later.
const DefaultTimeout = 30 * time.Second

// Config holds what a Provisioner needs.
type Config struct {
	// NodeName is the Kubernetes node this instance serves.
	NodeName string
	// DriverName is the CSI driver name: the PV's CSI driver and the
	// StorageClass provisioner.
	DriverName string
	// TopologyKey is the topology segment key the driver reports in
	// NodeGetInfo and in CreateVolume's accessible topology.
	TopologyKey string
	// ControllerClient is the driver's CSI controller service.
	ControllerClient csi.ControllerClient
	// Nodes finds the selected Node object. It needs to hold only this node,
	// see NewController. A claim whose selected node is gone is sent back to
	// the scheduler.
	Nodes corelisters.NodeLister
	// Classes finds a claim's StorageClass, to tell whether it changed
	// since the claim was refused (see refusals). NewController fills it;
	// nil means a class change alone never retries a refused claim.
	Classes storagelisters.StorageClassLister
	// Claims and Volumes find the source claim of a clone and its PV;
	// NewController fills them. Without them clones are refused.
	Claims  corelisters.PersistentVolumeClaimLister
	Volumes corelisters.PersistentVolumeLister
	// Snapshots reads the VolumeSnapshot a claim restores (snapshot.go).
	// Nil refuses restores: the cluster has no snapshot API.
	Snapshots SnapshotReader
	// Timeout bounds each CSI call; zero means DefaultTimeout.
	Timeout time.Duration
}

// Provisioner implements controller.Provisioner, controller.Qualifier and
// controller.BlockProvisioner for one node.
type Provisioner struct {
	nodeName    string
	driverName  string
	topologyKey string
	csi         csi.ControllerClient
	nodes       corelisters.NodeLister
	classes     storagelisters.StorageClassLister
	claims      corelisters.PersistentVolumeClaimLister
	volumes     corelisters.PersistentVolumeLister
	snapshots   SnapshotReader
	timeout     time.Duration
	refused     *refusals
}

var (
	_ controller.Provisioner      = &Provisioner{}
	_ controller.Qualifier        = &Provisioner{}
	_ controller.BlockProvisioner = &Provisioner{}
)

// New checks cfg and returns a Provisioner.
func New(cfg Config) (*Provisioner, error) {
	switch {
	case cfg.NodeName == "":
		return nil, errors.New("provisioner: node name is required")
	case cfg.DriverName == "":
		return nil, errors.New("provisioner: driver name is required")
	case cfg.TopologyKey == "":
		return nil, errors.New("provisioner: topology key is required")
	case cfg.ControllerClient == nil:
		return nil, errors.New("provisioner: CSI controller client is required")
	case cfg.Nodes == nil:
		return nil, errors.New("provisioner: node lister is required")
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Provisioner{
		nodeName:    cfg.NodeName,
		driverName:  cfg.DriverName,
		topologyKey: cfg.TopologyKey,
		csi:         cfg.ControllerClient,
		nodes:       cfg.Nodes,
		classes:     cfg.Classes,
		claims:      cfg.Claims,
		volumes:     cfg.Volumes,
		snapshots:   cfg.Snapshots,
		timeout:     timeout,
		refused:     newRefusals(),
	}, nil
}

// ShouldProvision accepts only claims selected for this node.
//
// The library calls it before anything else, so every node's instance sees
// every claim and all but one say no here. The library then requires on its
// own that the claim's volume.kubernetes.io/storage-provisioner annotation
// names this driver (set by the PV controller in kube-controller-manager,
// and for WaitForFirstConsumer classes shown by this node's view of the
// claim as soon as the scheduler has selected the node: handover.go), and, for WaitForFirstConsumer
// classes, that the selected-node annotation is set. A claim of a
// WaitForFirstConsumer class gets its node from the scheduler; a claim of an
// Immediate class has none until the placement duty sets one, and until then
// no instance provisions it.
//
// A claim filled by a volume populator is left to the populator, and a
// claim this node refused is not tried again until it or its class changes
// (see refusals): the library emits a Normal "Provisioning" event before
// every Provision, so the repeat is cut off here, before it.
func (p *Provisioner) ShouldProvision(_ context.Context, claim *v1.PersistentVolumeClaim) bool {
	return SelectedNode(claim) == p.nodeName && !forPopulator(claim) && !p.refused.seen(claim, p.classOf(claim))
}

// SupportsBlock says that volumeMode: Block claims are served: the library
// refuses them without asking Provision otherwise. The driver makes them
// block volumes (a loop device over a sparse file).
func (p *Provisioner) SupportsBlock(context.Context) bool { return true }

// classOf returns the claim's StorageClass as the informer has it, or nil.
func (p *Provisioner) classOf(claim *v1.PersistentVolumeClaim) *storagev1.StorageClass {
	if p.classes == nil || claim.Spec.StorageClassName == nil {
		return nil
	}
	class, err := p.classes.Get(*claim.Spec.StorageClassName)
	if err != nil {
		return nil
	}
	return class
}

// SelectedNode returns the node the claim was scheduled to (or placed on,
// for Immediate classes), or "".
func SelectedNode(claim *v1.PersistentVolumeClaim) string {
	if node, ok := claim.Annotations[AnnSelectedNode]; ok {
		return node
	}
	return claim.Annotations[annAlphaSelectedNode]
}

// Provision creates the volume on this node and returns its PV.
//
// The library sets what is left: claimRef (so the PV controller binds the
// pair), the pv.kubernetes.io/provisioned-by annotation, the finalizer, and
// StorageClassName again. It emits the ProvisioningFailed event with the text
// of the returned error, so every error here says what happened and what to
// do about it.
func (p *Provisioner) Provision(ctx context.Context, opts controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	logger := klog.FromContext(ctx).WithValues("pvc", klog.KObj(opts.PVC), "pv", opts.PVName, "node", opts.SelectedNodeName)
	ctx = klog.NewContext(ctx, logger)

	if opts.SelectedNodeName != p.nodeName {
		// ShouldProvision said yes for this node only; a different node
		// here means the claim changed in between. Leave it to its node.
		return nil, controller.ProvisioningFinished, &controller.IgnoredError{
			Reason: fmt.Sprintf("claim is selected for node %q, this is node %q", opts.SelectedNodeName, p.nodeName)}
	}
	if state, err := p.checkNode(); err != nil {
		return nil, state, err
	}
	req, err := p.createVolumeRequest(opts)
	if err != nil {
		// Refused before any call to the driver: no volume, no directory.
		p.refused.add(opts.PVC, opts.StorageClass)
		return nil, controller.ProvisioningFinished, err
	}
	if state, err := p.cloneSource(opts, req); err != nil {
		return nil, state, err
	}
	if state, err := p.snapshotSource(ctx, opts, req); err != nil {
		return nil, state, err
	}

	callCtx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	logger.V(4).Info("Creating volume", "requiredBytes", req.GetCapacityRange().GetRequiredBytes())
	resp, err := p.csi.CreateVolume(callCtx, req)
	if err != nil {
		if finalRefusal(err) {
			p.refused.add(opts.PVC, opts.StorageClass)
		}
		return nil, provisioningState(err), p.explainCreateError(err)
	}
	pv, err := p.persistentVolume(opts, req, resp.GetVolume())
	if err != nil {
		p.cleanup(ctx, resp.GetVolume().GetVolumeId())
		return nil, controller.ProvisioningFinished, err
	}
	logger.V(2).Info("Volume created", "volumeID", pv.Spec.CSI.VolumeHandle, "capacity", pv.Spec.Capacity.Storage())
	return pv, controller.ProvisioningFinished, nil
}

// checkNode sends the claim back to the scheduler when the Node object of
// this node is gone. (ProvisionOptions of library v13.1 carries only the
// selected node's name, not the Node, so the provisioner looks it up.) That
// happens when the node is being removed from the cluster, or when this
// process was started with a name no Node has. The library answers
// ProvisioningReschedule by removing the selected-node annotation from the
// claim; the scheduler (or the placement duty) then picks again.
func (p *Provisioner) checkNode() (controller.ProvisioningState, error) {
	_, err := p.nodes.Get(p.nodeName)
	switch {
	case err == nil:
		return controller.ProvisioningFinished, nil
	case apierrors.IsNotFound(err):
		return controller.ProvisioningReschedule, fmt.Errorf(
			"selected node %q no longer exists; the claim goes back to the scheduler to pick another node", p.nodeName)
	default:
		// A lister only fails like this on a broken cache; nothing was
		// started, so the state is final for this attempt.
		return controller.ProvisioningFinished, fmt.Errorf("looking up node %q: %w", p.nodeName, err)
	}
}

// cleanup deletes a volume that was created but cannot be handed out. The
// volume ID is deterministic (from the PV name), so when this fails the next
// Provision finds and reuses it.
func (p *Provisioner) cleanup(ctx context.Context, volumeID string) {
	if volumeID == "" {
		return
	}
	callCtx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	if _, err := p.csi.DeleteVolume(callCtx, &csi.DeleteVolumeRequest{VolumeId: volumeID}); err != nil {
		klog.FromContext(ctx).Error(err, "Cleaning up the volume failed", "volumeID", volumeID)
	}
}

// Delete removes the volume behind pv when pv lives on this node.
//
// Every node's instance is called for every released stickyvol PV. The
// others answer IgnoredError, which the library takes as "not mine": no
// VolumeFailedDelete event, no retry, and it leaves the PV and its finalizer
// to the instance that does the work. That instance deletes the PV object and
// then removes the finalizer.
func (p *Provisioner) Delete(ctx context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != p.driverName {
		return &controller.IgnoredError{Reason: fmt.Sprintf("PV %s is not a %s volume", pv.Name, p.driverName)}
	}
	nodes := p.nodesOf(pv)
	if len(nodes) == 0 {
		return &controller.IgnoredError{Reason: fmt.Sprintf("PV %s has no node affinity that names a node", pv.Name)}
	}
	if !nodes.Has(p.nodeName) {
		return &controller.IgnoredError{Reason: fmt.Sprintf("PV %s lives on node %s, this is node %s",
			pv.Name, sets.List(nodes)[0], p.nodeName)}
	}

	volumeID := pv.Spec.CSI.VolumeHandle
	logger := klog.FromContext(ctx).WithValues("pv", pv.Name, "volumeID", volumeID)
	callCtx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	// The driver answers success for an unknown ID, so a retry after a
	// lost reply is harmless.
	_, err := p.csi.DeleteVolume(callCtx, &csi.DeleteVolumeRequest{VolumeId: volumeID})
	switch status.Code(err) {
	case codes.OK:
	case codes.FailedPrecondition:
		// The driver refuses to delete a volume that is still bind-mounted
		// into a pod (the claim and its pod were deleted together). The
		// library retries a VolumeInUseError with a Normal event instead
		// of a Warning and a failure count: this is expected, and it ends
		// when kubelet unpublishes the volume.
		return &controller.VolumeInUseError{Reason: fmt.Sprintf(
			"volume %s on node %s is still mounted by a pod; deleting it once the pod is gone: %s",
			volumeID, p.nodeName, status.Convert(err).Message())}
	default:
		return fmt.Errorf("deleting volume %s on node %s: %w", volumeID, p.nodeName, err)
	}
	logger.V(2).Info("Volume deleted")
	return nil
}
