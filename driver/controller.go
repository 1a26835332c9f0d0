package driver

import (
	"context"
	"fmt"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"
)

// listTokenPrefix starts every ListVolumes (and ListSnapshots) token: "after:<last ID of the
// previous page>". Because the token names a position in the sorted ID
// order rather than an index, volumes created or deleted between pages
// neither repeat nor shift the next page. The prefix makes tokens that were
// not made here (anything without it) invalid, which ListVolumes answers
// with Aborted as CSI asks.
const listTokenPrefix = "after:"

// controllerServer implements the CSI Controller service. It runs in the
// node process: the "controller" of a node-local driver only manages the
// records and directories of its own node.
type controllerServer struct {
	csi.UnimplementedControllerServer
	nodeID  string
	pools   *pools
	locks   *volumeLocks
	mounter Mounter
	// changed is Config.VolumesChanged, or nil.
	changed func(less bool)
}

func (s *controllerServer) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t},
		}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// CreateVolume makes a volume on this node: with the pool's backend, an
// image volume when the parameters name a file system, or a block volume
// (block.go) for the block access type, whose size is rounded up to whole
// 512-byte sectors and whose parameters must not name a file system.
// Size: required_bytes, or DefaultVolumeSize (1 GiB) when no capacity
// range is given (lowered to limit_bytes if that is smaller). Codes:
// InvalidArgument for a bad name, capability (or a mix of block and mount
// ones), capacity range or parameter; ResourceExhausted when the
// accessibility requirements exclude this node or the size does not fit
// the node's free capacity; AlreadyExists for the same name with an
// incompatible size, directoryMode or access type, or an ID that another
// pool holds.
// With a volume content source it is a clone of that volume (clone.go):
// NotFound when the source is not a ready volume of this node,
// InvalidArgument when the request contradicts the source's access type,
// backend or pool, OutOfRange when limit_bytes is below the source's size;
// the response names the source. With a snapshot content source it is
// restored from that snapshot (snapshot.go), by the same rules: NotFound
// when it is not a snapshot of this node, InvalidArgument or OutOfRange
// when the request contradicts it, a size of at least the snapshot's.
// The volume goes to the pool its class names (ParamPool); a node without
// that pool answers ResourceExhausted, as for a node without room.
//
// OutOfRange is not used for "larger than this node": CSI reserves it for
// capacity ranges the plugin never supports, which stops the provisioner
// for good, while a claim too big for one node may fit another, which
// ResourceExhausted (reschedule) allows. A directory has no size limit of
// its own, so no capacity range is out of range as such.
func (s *controllerServer) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	spec, err := createSpec(req)
	if err != nil {
		return nil, err
	}
	if err := s.checkTopology(req.GetAccessibilityRequirements()); err != nil {
		return nil, err
	}
	st, err := s.pool(spec.Params)
	if err != nil {
		return nil, err
	}
	if spec.Source == "" && spec.Snapshot == "" {
		if err := checkEnforcement(st, spec.Params); err != nil {
			return nil, err
		}
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), "volumeID", spec.ID)
	unlock, err := s.locks.lock(spec.ID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if other := s.pools.holding(spec.ID); other != nil && other != st {
		return nil, status.Errorf(codes.AlreadyExists,
			"volume %s exists in pool %s, and the request asks for %s=%s", spec.ID, other.pool, ParamPool, st.pool)
	}
	if _, err := st.get(spec.ID); err != nil && (spec.Source != "" || spec.Snapshot != "") {
		// A new clone or restore (a repeated request finds the volume
		// made, and needs its source no more).
		find := s.cloneSource
		if spec.Snapshot != "" {
			find = s.snapshotSource
		}
		unlockSource, err := find(&spec, st)
		if err != nil {
			return nil, err
		}
		defer unlockSource()
		logger = logger.WithValues("source", spec.Source, "snapshotID", spec.Snapshot)
	}
	v, err := st.create(spec)
	if err != nil {
		return nil, statusFor(err, "creating volume "+spec.ID)
	}
	logger.V(2).Info("Volume ready", "capacityBytes", v.CapacityBytes, "pool", v.Pool, "pvc", klog.KRef(v.PVCNamespace, v.PVCName))
	s.volumesChanged(true)
	return &csi.CreateVolumeResponse{Volume: s.csiVolume(v)}, nil
}

// cloneSource locks and looks up the volume spec asks to clone, checks it
// (checkCopySource) and fills in spec's source and size. The returned
// function releases the source's lock, which is held until the copy is
// made: a DeleteVolume of the source meanwhile answers Aborted.
func (s *controllerServer) cloneSource(spec *volumeSpec, st *store) (unlock func(), err error) {
	unlock, err = s.locks.lock(spec.Source)
	if err != nil {
		return nil, err
	}
	src, err := s.pools.of(spec.Source).get(spec.Source)
	if err == nil {
		spec.Size, err = checkCopySource(volumeCopySource(src), st, *spec)
	} else {
		err = status.Errorf(codes.NotFound, "source volume %s is not a volume of node %s: %v", spec.Source, s.nodeID, err)
	}
	if err != nil {
		unlock()
		return nil, err
	}
	spec.source = &src
	return unlock, nil
}

// pool returns the store of the pool the parameters name. A node without
// that pool is ResourceExhausted, as for a topology it cannot serve:
// another node may have the pool (CSI's meaning of the code for
// CreateVolume, and the provisioner sends the claim back to the scheduler).
func (s *controllerServer) pool(p volumeParams) (*store, error) {
	st, ok := s.pools.named(p.pool())
	if !ok {
		return nil, status.Errorf(codes.ResourceExhausted, "%s %s: the class asks %s=%s, and this node serves pools %s (stickyvol node --pool)",
			NoPoolMessage, p.pool(), ParamPool, p.pool(), strings.Join(s.pools.names, ", "))
	}
	return st, nil
}

// checkEnforcement refuses a volume whose class requires an enforced size
// when new volumes in its pool st are directories. ResourceExhausted, for
// the reason pool gives.
func checkEnforcement(st *store, p volumeParams) error {
	if !p.SizeRequired || p.Image || p.Block || st.defaultBackend.Name() != BackendDirectory {
		return nil
	}
	return status.Errorf(codes.ResourceExhausted,
		"%s: new volumes in pool %s are directories, whose size is bookkeeping (its data root is not btrfs, or --backend=directory), and the class asks %s: %s",
		NotEnforcedMessage, st.pool, ParamSizeEnforcement, SizeEnforcementRequired)
}

// createSpec validates a CreateVolumeRequest.
func createSpec(req *csi.CreateVolumeRequest) (volumeSpec, error) {
	if err := validateVolumeID(req.GetName(), "name"); err != nil {
		return volumeSpec{}, err
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return volumeSpec{}, err
	}
	size, err := volumeSize(req.GetCapacityRange())
	if err != nil {
		return volumeSpec{}, err
	}
	params, err := parseParameters(req.GetParameters())
	if err != nil {
		return volumeSpec{}, err
	}
	if params.Block, err = blockAccess(req.GetVolumeCapabilities()); err != nil {
		return volumeSpec{}, err
	}
	if params.Block {
		if err := checkBlockParams(params); err != nil {
			return volumeSpec{}, err
		}
		if size, err = blockSize(size, req.GetCapacityRange()); err != nil {
			return volumeSpec{}, err
		}
	}
	source, snapshot, err := contentSource(req)
	if err != nil {
		return volumeSpec{}, err
	}
	if len(req.GetMutableParameters()) > 0 {
		return volumeSpec{}, status.Error(codes.InvalidArgument,
			"mutable parameters (VolumeAttributesClass) are not supported")
	}
	if size, err = imageSize(size, req.GetCapacityRange(), params); err != nil {
		return volumeSpec{}, err
	}
	return volumeSpec{ID: req.GetName(), Size: size, Range: req.GetCapacityRange(), Params: params, Source: source, Snapshot: snapshot}, nil
}

// contentSource returns the ID of the volume the request clones or of the
// snapshot it restores; both are "" without a content source.
func contentSource(req *csi.CreateVolumeRequest) (volume, snapshot string, err error) {
	src := req.GetVolumeContentSource()
	switch {
	case src == nil:
		return "", "", nil
	case src.GetSnapshot() != nil:
		id := src.GetSnapshot().GetSnapshotId()
		if err := validateVolumeID(id, "volume_content_source.snapshot.snapshot_id"); err != nil {
			return "", "", err
		}
		return "", id, nil
	case src.GetVolume() == nil:
		return "", "", status.Error(codes.InvalidArgument, "volume_content_source names neither a volume nor a snapshot")
	}
	id := src.GetVolume().GetVolumeId()
	if err := validateVolumeID(id, "volume_content_source.volume.volume_id"); err != nil {
		return "", "", err
	}
	if id == req.GetName() {
		return "", "", status.Errorf(codes.InvalidArgument, "volume %s cannot be a clone of itself", id)
	}
	return id, "", nil
}

// imageSize raises the size of an image volume to the least its file
// system can be made with, as CSI allows within limit_bytes; a limit below
// that is OutOfRange, a size this node can never make.
func imageSize(size int64, r *csi.CapacityRange, p volumeParams) (int64, error) {
	least := imageFileSystems[p.FsType].minSize
	if !p.Image || size >= least {
		return size, nil
	}
	if limit := r.GetLimitBytes(); limit > 0 && limit < least {
		return 0, status.Errorf(codes.OutOfRange,
			"%s image volumes are at least %d bytes (what mkfs makes), and limit_bytes is %d", p.FsType, least, limit)
	}
	return least, nil
}

// checkTopology refuses a request whose accessibility requirements do not
// include this node: the requisite list when there is one, else the
// preferred list. CSI lets a plugin go outside a preferred-only list, but a
// node-local volume cannot be anywhere but here, and making it on a node the
// CO did not ask for would pin the pod to that node. ResourceExhausted makes
// external-provisioner reschedule the claim.
func (s *controllerServer) checkTopology(req *csi.TopologyRequirement) error {
	list := req.GetRequisite()
	if len(list) == 0 {
		list = req.GetPreferred()
	}
	if len(list) == 0 || s.inTopology(list) {
		return nil
	}
	return status.Errorf(codes.ResourceExhausted,
		"this driver instance can only make volumes on node %q, which the accessibility requirements %v do not include",
		s.nodeID, topologyString(list))
}

// inTopology reports whether one of the segments in list describes this
// node: every key in it is TopologyKey with this node's ID as value.
func (s *controllerServer) inTopology(list []*csi.Topology) bool {
	for _, t := range list {
		match := true
		for k, v := range t.GetSegments() {
			if k != TopologyKey || v != s.nodeID {
				match = false
			}
		}
		if match {
			return true
		}
	}
	return false
}

func topologyString(list []*csi.Topology) string {
	var parts []string
	for _, t := range list {
		parts = append(parts, fmt.Sprint(t.GetSegments()))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func (s *controllerServer) csiVolume(v Volume) *csi.Volume {
	identity, where := "", ""
	if st, ok := s.pools.named(v.Pool); ok {
		identity = st.identity
		switch b := st.backend(v).(type) {
		case dataLocator:
			where = b.DataPath(v.ID)
		case backend:
			where = b.Path(v.ID)
		}
	}
	vctx := map[string]string{
		VolumeContextDataRoot: identity,
		VolumeContextPool:     v.Pool,
		VolumeContextBackend:  v.Backend,
		VolumeContextPath:     where,
	}
	if v.FsType != "" {
		vctx[VolumeContextFsType] = v.FsType
	}
	if v.Ephemeral {
		vctx[VolumeContextEphemeral] = "true"
	}
	var source *csi.VolumeContentSource
	switch {
	case v.ClonedFrom != "":
		source = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.ClonedFrom}}}
	case v.RestoredFrom != "":
		source = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.RestoredFrom}}}
	}
	return &csi.Volume{
		ContentSource:      source,
		VolumeId:           v.ID,
		CapacityBytes:      v.CapacityBytes,
		AccessibleTopology: []*csi.Topology{{Segments: map[string]string{TopologyKey: s.nodeID}}},
		// Carried in the PV's volumeAttributes back to NodePublishVolume,
		// which refuses a volume made on another data root or in a pool
		// this node lacks; the backend and path are there for people to
		// read.
		VolumeContext: vctx,
	}
}

// DeleteVolume removes a volume's directory and record. An unknown volume
// is success. A volume still mounted at one of its targets is
// FailedPrecondition: removing the directory would pull the data from under
// a running pod. Targets recorded but no longer mounted (a node reboot, a
// kubelet that cleaned up without NodeUnpublishVolume) do not block it.
func (s *controllerServer) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := validateVolumeID(id, "volume ID"); err != nil {
		return nil, err
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), "volumeID", id)
	unlock, err := s.locks.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st := s.pools.of(id)
	if v, err := st.get(id); err == nil {
		live, err := pruneTargets(klog.NewContext(ctx, logger), st, s.mounter, v, "")
		if err != nil {
			return nil, statusFor(err, "checking where volume "+id+" is published")
		}
		if len(live) > 0 {
			return nil, status.Errorf(codes.FailedPrecondition,
				"volume %s is still published at %s; unpublish it first", id, live[0].Path)
		}
	}
	if err := st.delete(id); err != nil {
		return nil, statusFor(err, "deleting volume "+id)
	}
	logger.V(2).Info("Volume deleted")
	s.volumesChanged(false)
	return &csi.DeleteVolumeResponse{}, nil
}

// volumesChanged tells Config.VolumesChanged, if set, that the volumes (and
// so the free capacity) may have changed. A retried CreateVolume or a
// DeleteVolume of an unknown ID calls it too: the listener only looks again.
func (s *controllerServer) volumesChanged(less bool) {
	if s.changed != nil {
		s.changed(less)
	}
}

// ControllerExpandVolume raises a volume's size to required_bytes: its
// backend's limit (a btrfs qgroup's; nothing for a directory; a block
// volume's file and, while attached, its loop device) and what it
// reserves of the node's capacity. Sizes never shrink: a volume that is
// large enough already is left as it is and its size returned. Codes:
// InvalidArgument without a positive required_bytes or with a capability
// this driver does not support or whose access type is not the volume's; NotFound for an unknown volume; OutOfRange
// when the volume is already larger than limit_bytes; ResourceExhausted
// when the growth does not fit the node's free capacity (a node-local
// volume cannot move elsewhere to grow). For a directory or a subvolume the
// file system the pod sees is the data root's, which follows the limit, so
// no node step is needed; an image volume's file system is its own and
// grows in NodeExpandVolume (NodeExpansionRequired).
func (s *controllerServer) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := validateVolumeID(id, "volume ID"); err != nil {
		return nil, err
	}
	r := req.GetCapacityRange()
	if _, err := volumeSize(r); err != nil {
		return nil, err
	}
	if r.GetRequiredBytes() <= 0 {
		return nil, status.Error(codes.InvalidArgument, "capacity_range.required_bytes must be set to the new size")
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := checkCapability(c); err != nil {
			return nil, err
		}
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), "volumeID", id)
	unlock, err := s.locks.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st := s.pools.of(id)
	v, err := st.get(id)
	if err != nil {
		return nil, statusFor(err, "looking up volume "+id)
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := checkAccessType(v, c); err != nil {
			return nil, err
		}
	}
	if limit := r.GetLimitBytes(); limit > 0 && v.CapacityBytes > limit {
		return nil, status.Errorf(codes.OutOfRange,
			"volume %s has %d bytes, more than limit_bytes=%d, and volumes do not shrink", id, v.CapacityBytes, limit)
	}
	old := v.CapacityBytes
	if v, err = st.expand(id, r.GetRequiredBytes()); err != nil {
		return nil, statusFor(err, "expanding volume "+id)
	}
	if v.CapacityBytes != old {
		logger.V(2).Info("Volume expanded", "capacityBytes", v.CapacityBytes, "previousBytes", old)
		s.volumesChanged(true)
	}
	// A block volume's device took the new size in Expand: no file
	// system waits for a node step.
	_, twoSteps := st.backend(v).(nodeExpander)
	twoSteps = twoSteps && v.Backend != BackendBlock
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: v.CapacityBytes, NodeExpansionRequired: twoSteps}, nil
}

// ValidateVolumeCapabilities confirms the capabilities and parameters this
// driver supports for an existing volume; anything else is answered without
// confirmation and with a message that says why.
func (s *controllerServer) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	id := req.GetVolumeId()
	if err := validateVolumeID(id, "volume ID"); err != nil {
		return nil, err
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	v, err := s.pools.of(id).get(id)
	if err != nil {
		return nil, statusFor(err, "looking up volume "+id)
	}
	unconfirmed := func(err error) *csi.ValidateVolumeCapabilitiesResponse {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return unconfirmed(err), nil
	}
	block, err := blockAccess(req.GetVolumeCapabilities())
	if err != nil {
		return unconfirmed(err), nil
	}
	if isBlock := v.Backend == BackendBlock; block != isBlock {
		return unconfirmed(status.Errorf(codes.InvalidArgument, "volume %s is %s", id, blockNote(isBlock))), nil
	}
	if len(req.GetParameters()) > 0 {
		params, err := parseParameters(req.GetParameters())
		if err != nil {
			return unconfirmed(err), nil
		}
		params.Block = block
		if err := compatible(v, volumeSpec{Params: params}); err != nil {
			return unconfirmed(err), nil
		}
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// ListVolumes pages through the ready volumes of all pools in ID order.
func (s *controllerServer) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "max_entries %d must not be negative", req.GetMaxEntries())
	}
	after, err := listAfter(req.GetStartingToken(), "ListVolumes")
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{}
	for _, v := range s.pools.list() {
		if v.ID <= after {
			continue
		}
		if req.GetMaxEntries() > 0 && len(resp.Entries) == int(req.GetMaxEntries()) {
			resp.NextToken = listTokenPrefix + resp.Entries[len(resp.Entries)-1].GetVolume().GetVolumeId()
			break
		}
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: s.csiVolume(v)})
	}
	return resp, nil
}

// listAfter returns the ID a list token names (listTokenPrefix), or "" for
// no token; a token rpc did not make is Aborted.
func listAfter(token, rpc string) (string, error) {
	if token == "" {
		return "", nil
	}
	after, ok := strings.CutPrefix(token, listTokenPrefix)
	if !ok || validateVolumeID(after, "token") != nil {
		return "", status.Errorf(codes.Aborted, "starting_token %q was not returned by %s; start again without one", token, rpc)
	}
	return after, nil
}

// GetCapacity reports the capacity still free in the pool the parameters
// name (ParamPool, else the default pool), and also the largest volume that
// fits (all of it: a volume is one directory). It is 0 for a pool this node
// does not have, for a topology segment of another node and for
// capabilities this driver cannot provision, since no such volume can be
// made here. Parameters are checked as CreateVolume checks them: an unknown
// one is InvalidArgument.
func (s *controllerServer) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	params, err := parseParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	st, err := s.pool(params)
	if err != nil {
		// So published, the scheduler keeps the class's claims off this
		// node.
		return &csi.GetCapacityResponse{AvailableCapacity: 0, MaximumVolumeSize: wrapperspb.Int64(0)}, nil
	}
	capacity, allocated := st.usage()
	free := max(capacity-allocated, 0)
	// No room at all for a class whose sizes this pool cannot enforce.
	if checkEnforcement(st, params) != nil {
		free = 0
	}
	if t := req.GetAccessibleTopology(); t != nil && !s.inTopology([]*csi.Topology{t}) {
		free = 0
	}
	for _, c := range req.GetVolumeCapabilities() {
		if checkCapability(c) != nil {
			free = 0
		}
	}
	return &csi.GetCapacityResponse{AvailableCapacity: free, MaximumVolumeSize: wrapperspb.Int64(free)}, nil
}
