package driver

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// maxStackedMounts bounds the unmount loop of NodeUnpublishVolume, which
// peels off mounts of the volume stacked on one target.
const maxStackedMounts = 8

// nodeServer implements the CSI Node service. There is no staging: a
// volume is a directory (or, for block, a device), so NodePublishVolume
// bind-mounts it straight onto the target path.
type nodeServer struct {
	csi.UnimplementedNodeServer
	nodeID     string
	maxVolumes int64
	pools      *pools
	locks      *volumeLocks
	mounter    Mounter
	// changed is Config.VolumesChanged, or nil: inline ephemeral volumes
	// are made and deleted here.
	changed func(less bool)
}

// checkTargetPath validates a target path (validateTargetPath) against the
// data root of every pool; real checks against the roots with symlinks
// resolved, to refuse targets that reach into one through a symlinked
// parent.
func (s *nodeServer) checkTargetPath(target string, real bool) error {
	for _, st := range s.pools.all() {
		root := st.rootPath
		if real {
			root = st.realRoot
		}
		if err := validateTargetPath(target, root); err != nil {
			return err
		}
	}
	return nil
}

func (s *nodeServer) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             s.nodeID,
		MaxVolumesPerNode:  s.maxVolumes,
		AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKey: s.nodeID}},
	}, nil
}

func (s *nodeServer) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: t},
		}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodePublishVolume bind-mounts the volume's directory at the target path,
// read-only when the request says readonly, the access mode is
// SINGLE_NODE_READER_ONLY or the mount flags say "ro", and with the other
// mount flags (nosuid, nodev, noexec, atime; see parseMountFlags) applied
// to that mount.
//
// The target itself is created here: CSI leaves the parent directory to
// the CO and the target to the plugin. Kubelet's csiMountMgr.SetUpAt runs
// os.MkdirAll(filepath.Dir(dir)) before NodePublishVolume and never creates
// dir, and its TearDownAt removes dir again after NodeUnpublishVolume only
// if the plugin left it. So a missing parent is the CO's error
// (FailedPrecondition) and is not created here.
//
// The target is recorded in the volume's record before it is mounted, so
// after a crash or restart the driver still knows every place the volume
// may be mounted. A repeated call for a mounted target with the same
// read-only flag, access mode and mount options succeeds (and makes sure
// the mount has them); different ones get AlreadyExists. A volume published
// with SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod) can be mounted at one
// target only: another target gets FailedPrecondition.
//
// A block volume (block.go) is published as its loop device, bind-mounted
// onto the target, which for block is a file the plugin creates. Kubelet's
// csiBlockMapper (pkg/volume/csi/csi_block.go, publishVolumeForBlock) makes
// only the target's parent directory, under
// plugins/kubernetes.io/csi/volumeDevices/publish/, and leaves the target
// itself to the driver; at teardown it skips NodeUnpublishVolume when the
// target is gone, so the file must stay for as long as the device is
// published there. Kubelet then maps that file into the pod on its own.
//
// A volume context with csi.storage.k8s.io/ephemeral=true asks for an
// inline ephemeral volume, made here first (ephemeral.go).
func (s *nodeServer) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if err := validateVolumeID(id, "volume ID"); err != nil {
		return nil, err
	}
	if err := s.checkTargetPath(target, false); err != nil {
		return nil, err
	}
	if err := checkCapability(req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), "volumeID", id, "targetPath", target)
	ctx = klog.NewContext(ctx, logger)
	unlock, err := s.locks.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, v, created, err := s.volumeToPublish(ctx, req)
	if err != nil {
		return nil, err
	}
	if err := s.publishTarget(ctx, st, v, req); err != nil {
		if created {
			s.rollbackEphemeral(ctx, st, id)
		}
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// volumeToPublish finds the volume a publish request names, or makes it
// when the request is for an inline ephemeral volume (created).
func (s *nodeServer) volumeToPublish(ctx context.Context, req *csi.NodePublishVolumeRequest) (st *store, v Volume, created bool, err error) {
	id := req.GetVolumeId()
	if isEphemeral(req.GetVolumeContext()) {
		return s.ephemeralVolume(ctx, req)
	}
	if st, err = s.madeHere(id, req.GetVolumeContext()); err != nil {
		return nil, Volume{}, false, err
	}
	if v, err = st.get(id); err != nil {
		return nil, Volume{}, false, statusFor(err, "looking up volume "+id)
	}
	return st, v, false, nil
}

// publishTarget publishes volume v at the request's target.
func (s *nodeServer) publishTarget(ctx context.Context, st *store, v Volume, req *csi.NodePublishVolumeRequest) error {
	target, block := req.GetTargetPath(), req.GetVolumeCapability().GetBlock() != nil
	if err := checkAccessType(v, req.GetVolumeCapability()); err != nil {
		return err
	}
	mode := req.GetVolumeCapability().GetAccessMode().GetMode()
	options, readOnly, err := parseMountFlags(req.GetVolumeCapability().GetMount().GetMountFlags())
	if err != nil {
		return err
	}
	want := Target{
		Path:         target,
		ReadOnly:     readOnly || req.GetReadonly() || mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		AccessMode:   mode.String(),
		MountOptions: strings.Join(options, ","),
	}
	// A read-only block target gets the device like any other: a read-only
	// mount does not stop writes to a device node (the kernel checks a
	// mount's ro flag for regular files and directories only). What stops
	// them is kubelet, which hands a read-only block volume to the
	// container runtime with device permission "r" instead of "mrw"
	// (makeBlockVolumes in pkg/kubelet/kubelet_pods.go), so the container's
	// device cgroup refuses writes; the one loop device serves every target.
	exists, err := s.checkTarget(target, block)
	if err != nil {
		return err
	}
	alone, err := s.admit(ctx, st, v, want)
	if err != nil {
		return err
	}
	if err := s.expandUnpublished(ctx, st, v, want, alone); err != nil {
		return err
	}
	if block {
		err = s.publishDevice(ctx, st, v, want, exists, alone)
	} else {
		err = s.publish(ctx, st, v, want, exists)
	}
	if err != nil {
		return err
	}
	klog.FromContext(ctx).V(2).Info("Volume published", "readOnly", want.ReadOnly, "accessMode", want.AccessMode,
		"mountOptions", want.MountOptions, "block", block, "ephemeral", v.Ephemeral)
	return nil
}

// madeHere returns the store of the pool that the volume context says
// holds volume id (the one holding id when the context names none, as for
// volumes made before there were pools), after checking that the pool's
// data root is the one the volume was made on. Both refusals are
// FailedPrecondition: the volume's data is not on this node as it is now.
func (s *nodeServer) madeHere(id string, volumeContext map[string]string) (*store, error) {
	st := s.pools.of(id)
	if name := volumeContext[VolumeContextPool]; name != "" {
		var ok bool
		if st, ok = s.pools.named(name); !ok {
			return nil, status.Errorf(codes.FailedPrecondition,
				"volume %s was made in pool %s, which this node does not serve any more (its pools are %s): "+
					"give stickyvol node --pool %s=<its data root> again",
				id, name, strings.Join(s.pools.names, ", "), name)
		}
	}
	if made := volumeContext[VolumeContextDataRoot]; made != "" && made != st.identity {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %s was made on data root %s, but this node's data root %s (pool %s) is %s: the disk or the data root was "+
				"replaced or wiped, and this volume's data is not here. If it is gone for good, delete the claim",
			id, made, st.rootPath, st.pool, st.identity)
	}
	return st, nil
}

// admit checks a publish request against the volume's other targets and
// records the target. alone reports that the volume is mounted at no
// other target.
func (s *nodeServer) admit(ctx context.Context, st *store, v Volume, want Target) (alone bool, err error) {
	src, err := st.mountSource(v)
	if err != nil {
		return false, statusFor(err, "finding the volume's device")
	}
	if old, ok := v.target(want.Path); ok {
		if old == want {
			return false, nil
		}
		_, mounted, err := s.mounter.Mounted(want.Path, src)
		if err != nil {
			return false, statusFor(err, "checking target path")
		}
		if mounted {
			return false, status.Errorf(codes.AlreadyExists,
				"volume %s is already published at %s with readOnly=%t, access mode %s and mount options %q",
				v.ID, want.Path, old.ReadOnly, old.AccessMode, old.MountOptions)
		}
	}
	live, err := pruneTargets(ctx, st, s.mounter, v, want.Path)
	if err != nil {
		return false, statusFor(err, "checking where the volume is published")
	}
	rwop := csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER.String()
	for _, t := range live {
		if t.AccessMode == rwop || want.AccessMode == rwop {
			return false, status.Errorf(codes.FailedPrecondition,
				"volume %s is ReadWriteOncePod (SINGLE_NODE_SINGLE_WRITER) and already published at %s",
				v.ID, t.Path)
		}
	}
	if err := st.setTarget(v.ID, want); err != nil {
		return false, statusFor(err, "recording target path")
	}
	return len(live) == 0, nil
}

// expandUnpublished gives a volume that grew while no pod had it mounted
// its new size before the first pod mounts it, where its backend grows in
// a node step (image volumes). That is where growth refused online (ext4
// without CAP_SYS_RESOURCE) happens offline. A failure forgets the target
// admit recorded, as a failed mount does.
func (s *nodeServer) expandUnpublished(ctx context.Context, st *store, v Volume, t Target, alone bool) error {
	ne, ok := st.backend(v).(nodeExpander)
	if !ok || !alone {
		return nil
	}
	err := ne.ExpandUnpublished(v.ID, v.FsType)
	if err == nil {
		return nil
	}
	if derr := st.dropTarget(v.ID, t.Path); derr != nil {
		klog.FromContext(ctx).Error(derr, "Cannot forget the target of a failed publish")
	}
	return statusFor(err, "growing the file system of volume "+v.ID+" before its first mount")
}

// publish makes the target directory if it does not exist and mounts the
// volume there, unless it already is. When it cannot mount, the target is
// forgotten again and a directory it made is removed; a target where the
// volume is mounted stays recorded whatever happens.
func (s *nodeServer) publish(ctx context.Context, st *store, v Volume, t Target, exists bool) error {
	src := st.publishPath(v)
	undo := func(err error) error {
		if !exists {
			_ = os.Remove(t.Path)
		}
		if derr := st.dropTarget(v.ID, t.Path); derr != nil {
			klog.FromContext(ctx).Error(derr, "Cannot forget the target of a failed publish")
		}
		return err
	}
	if !exists {
		if err := os.Mkdir(t.Path, 0o750); err != nil {
			return undo(status.Errorf(codes.Internal, "creating target path: %v", err))
		}
	}
	flags := flagsOf(t)
	mountPoint, ours, err := s.mounter.Mounted(t.Path, src)
	switch {
	case err != nil:
		return statusFor(err, "checking target path")
	case ours && flags != 0:
		// On kernels without mount_setattr, a crash between the bind
		// mount and the remount leaves a mount without its flags
		// (writable, say); make sure it has them.
		if err := s.mounter.Remount(t.Path, flags); err != nil {
			return statusFor(err, "applying the mount flags")
		}
		return nil
	case ours:
		return nil
	case mountPoint:
		return undo(status.Errorf(codes.FailedPrecondition,
			"target path %s already has a mount that is not volume %s", t.Path, v.ID))
	}
	if _, err := os.Stat(src); err != nil {
		return undo(status.Errorf(codes.Internal, "volume directory of %s is missing: %v", v.ID, err))
	}
	if err := s.mounter.BindMount(src, t.Path, flags); err != nil {
		return undo(statusFor(err, "mounting volume"))
	}
	return nil
}

// checkTarget checks, without changing anything, that the target's parent
// exists and, with symlinks resolved, is outside the data roots, and that
// the target is missing or a directory; for a block volume, missing or a
// file (a regular one, or the device already bind-mounted there).
func (s *nodeServer) checkTarget(target string, block bool) (exists bool, err error) {
	parent, err := filepath.EvalSymlinks(filepath.Dir(target))
	if errors.Is(err, fs.ErrNotExist) {
		return false, status.Errorf(codes.FailedPrecondition,
			"parent directory of target path %s does not exist; the CO must create it", target)
	}
	if err != nil {
		return false, status.Errorf(codes.Internal, "resolving target path: %v", err)
	}
	if err := s.checkTargetPath(filepath.Join(parent, filepath.Base(target)), true); err != nil {
		return false, err
	}
	fi, err := os.Lstat(target)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, status.Errorf(codes.Internal, "checking target path: %v", err)
	case block && !fi.Mode().IsRegular() && fi.Mode().Type() != fs.ModeDevice:
		return false, status.Errorf(codes.InvalidArgument,
			"target path %s of a block volume exists and is not a file (%s)", target, fi.Mode().Type())
	case block:
	case !fi.IsDir():
		return false, status.Errorf(codes.InvalidArgument,
			"target path %s exists and is not a directory (%s)", target, fi.Mode().Type())
	}
	return true, nil
}

// pruneTargets returns the targets of v (except the path except) where the
// volume is still mounted, and forgets the others: they were recorded by a
// publish that did not get to mount, or unmounted behind the driver's back
// (a node reboot, kubelet cleaning up a pod directory).
func pruneTargets(ctx context.Context, st *store, m Mounter, v Volume, except string) ([]Target, error) {
	src, err := st.mountSource(v)
	if err != nil {
		return nil, err
	}
	var live []Target
	for _, t := range v.Targets {
		if t.Path == except {
			continue
		}
		_, ours, err := m.Mounted(t.Path, src)
		if err != nil {
			return nil, err
		}
		if ours {
			live = append(live, t)
			continue
		}
		if err := st.dropTarget(v.ID, t.Path); err != nil {
			return nil, err
		}
		klog.FromContext(ctx).V(2).Info("Forgot a target where the volume is no longer mounted", "targetPath", t.Path)
	}
	return live, nil
}

// NodeUnpublishVolume unmounts the volume from the target path and removes
// the target directory (a block volume's target file). When no target has
// the volume any more, a block volume's device is detached and an inline
// ephemeral volume deleted. A missing target, or one the volume was never
// published at, is success; a target that is the volume's but holds another
// mount is left alone (FailedPrecondition). For a volume the driver does
// not know, a target that is no mount point is success too, so kubelet can
// finish tearing a pod down whatever happened to the volume; a mount point
// there is NotFound, since nothing says it is the volume's.
func (s *nodeServer) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if err := validateVolumeID(id, "volume ID"); err != nil {
		return nil, err
	}
	if err := s.checkTargetPath(target, false); err != nil {
		return nil, err
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), "volumeID", id, "targetPath", target)
	unlock, err := s.locks.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st := s.pools.of(id)
	v, err := st.get(id)
	if err != nil {
		if mountPoint, _, merr := s.mounter.Mounted(target, st.volumePath(id)); errors.Is(err, errNotFound) && merr == nil && !mountPoint {
			logger.V(4).Info("Unknown volume and no mount at the target; nothing to do")
			return &csi.NodeUnpublishVolumeResponse{}, nil
		}
		return nil, statusFor(err, "looking up volume "+id)
	}
	_, recorded := v.target(target)
	src, err := st.mountSource(v)
	if err != nil {
		return nil, statusFor(err, "finding the volume's device")
	}
	unmounted, foreign, err := s.unmountAll(target, src)
	switch {
	case err != nil:
		return nil, err
	case !recorded && !unmounted:
		logger.V(4).Info("Volume is not published at this target; nothing to do")
		if v.Backend == BackendBlock {
			// Kubelet leaves a block target for the driver to remove,
			// and a forgotten one may still be the file made for it.
			removeEmptyFile(target)
		}
		// But what the last target held may still be held: the target
		// was forgotten since (kubelet unmounted it, the node rebooted),
		// or a retry finds the unmount done and the detach not.
		if err := s.afterLastTarget(klog.NewContext(ctx, logger), st, id); err != nil {
			return nil, err
		}
		return &csi.NodeUnpublishVolumeResponse{}, nil
	case foreign:
		return nil, status.Errorf(codes.FailedPrecondition,
			"target path %s has a mount that is not volume %s; not touching it", target, id)
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "removing target path after unmount: %v", err)
	}
	if err := st.dropTarget(id, target); err != nil {
		return nil, statusFor(err, "forgetting target path")
	}
	logger.V(2).Info("Volume unpublished")
	if err := s.afterLastTarget(klog.NewContext(ctx, logger), st, id); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// afterLastTarget releases what volume id holds only while published,
// once no target has it any more: a block volume's loop device is
// detached, an inline ephemeral volume is deleted.
func (s *nodeServer) afterLastTarget(ctx context.Context, st *store, id string) error {
	v, err := st.get(id)
	if err != nil {
		return statusFor(err, "looking up volume "+id)
	}
	_, device := st.backend(v).(deviceBackend)
	if !device && !v.Ephemeral {
		return nil
	}
	live, err := pruneTargets(ctx, st, s.mounter, v, "")
	if err != nil {
		return statusFor(err, "checking where volume "+id+" is published")
	}
	if len(live) > 0 {
		return nil
	}
	if v.Ephemeral {
		return s.deleteEphemeral(ctx, st, id)
	}
	if err := st.backend(v).(deviceBackend).Detach(id); err != nil {
		return statusFor(err, "detaching the device of volume "+id)
	}
	klog.FromContext(ctx).V(2).Info("Block volume's device detached: no target has it")
	return nil
}

// unmountAll unmounts the volume at target until target no longer shows
// it. foreign reports that something else is mounted there then.
func (s *nodeServer) unmountAll(target, src string) (unmounted, foreign bool, err error) {
	for range maxStackedMounts {
		mountPoint, ours, err := s.mounter.Mounted(target, src)
		if err != nil {
			return unmounted, false, statusFor(err, "checking target path")
		}
		if !ours {
			return unmounted, mountPoint, nil
		}
		if err := s.mounter.Unmount(target); err != nil {
			return unmounted, false, statusFor(err, "unmounting volume")
		}
		unmounted = true
	}
	return unmounted, false, status.Errorf(codes.Internal,
		"target path %s still shows the volume after %d unmounts", target, maxStackedMounts)
}
