package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/klog/v2"
)

// CSI inline ephemeral volumes: a pod's own volume, declared in the pod
// (volumes[].csi with this driver), made when kubelet publishes it and
// deleted when kubelet unpublishes it. No claim, no PV, no CreateVolume.
//
// What kubelet sends (pkg/volume/csi/csi_mounter.go, SetUpAt): the
// volume ID is "csi-" and the hex SHA-256 of the pod's UID and the
// volume's name, so it is unique per pod volume and the same on every
// retry; the volume context is the pod's volumeAttributes merged with the
// pod information, and only that information says the volume is
// ephemeral (csi.storage.k8s.io/ephemeral=true). Kubelet adds the pod
// information only for a CSIDriver with podInfoOnMount: true, which
// deploy/ sets: without it this driver would take an inline volume for a
// persistent one and answer NotFound. The access mode is that of
// ReadWriteOnce, the capability's fs type the inline volume's fsType, and
// readOnly its readOnly. After NodeUnpublishVolume, kubelet's TearDownAt
// removes the target and its parent directory (the pod volume's
// directory, with vol_data.json); the sweep below relies on that.
//
// The record says the volume is ephemeral (Volume.Ephemeral), so that
// nothing of one outlives its pod:
//   - NodeUnpublishVolume deletes it once no target has it.
//   - A publish that fails after making it deletes it again; kubelet
//     retries with the same ID and gets a new one.
//   - At start the agent deletes every ephemeral volume that no target
//     has mounted and whose targets' parent directories are all gone:
//     kubelet tore the pod's volume down (or never got to publish it),
//     so no NodeUnpublishVolume will come. One whose pod volume directory
//     is still there waits for kubelet, which publishes it again (a node
//     reboot: the data is kept, as for a persistent volume) or
//     unpublishes it.
//   - ListVolumes marks them (VolumeContextEphemeral), and the
//     provisioner's reconciler leaves them out of its orphans: they have
//     no PV by design.

// VolumeContextEphemeral is the volume context key, in ListVolumes, that
// marks an inline ephemeral volume ("true").
const VolumeContextEphemeral = "stickyvol.dev/ephemeral"

// Volume attributes of inline ephemeral volumes.
const (
	// ephemeralKey is the pod information key kubelet sets to "true" for
	// an inline ephemeral volume.
	ephemeralKey = metadataPrefix + "ephemeral"
	// AttrSize is the size of an inline ephemeral volume, a Kubernetes
	// quantity ("512Mi", "2Gi"); without it, DefaultVolumeSize. The other
	// attributes are the StorageClass parameters (directoryMode,
	// sizeEnforcement, pool, volumeType, fsType).
	AttrSize = "size"
)

func isEphemeral(volumeContext map[string]string) bool { return volumeContext[ephemeralKey] == "true" }

func ephemeralNote(ephemeral bool) string {
	if ephemeral {
		return "an inline ephemeral volume"
	}
	return "a persistent volume"
}

// ephemeralSpec validates an inline volume's attributes into what
// CreateVolume would get. fsType is the capability's (the inline volume's
// fsType field), which an fsType attribute overrides.
func ephemeralSpec(id string, attrs map[string]string, fsType string) (volumeSpec, error) {
	params := maps.Clone(attrs)
	size := DefaultVolumeSize
	if value, ok := params[AttrSize]; ok {
		delete(params, AttrSize)
		q, err := resource.ParseQuantity(value)
		switch {
		case err != nil:
			return volumeSpec{}, status.Errorf(codes.InvalidArgument,
				"inline volume attribute %s=%q is not a quantity such as \"512Mi\" or \"2Gi\"", AttrSize, value)
		case q.Sign() <= 0:
			return volumeSpec{}, status.Errorf(codes.InvalidArgument, "inline volume attribute %s=%q must be positive", AttrSize, value)
		case q.Cmp(*resource.NewQuantity(math.MaxInt64, resource.BinarySI)) > 0:
			return volumeSpec{}, status.Errorf(codes.OutOfRange, "inline volume attribute %s=%q is more bytes than a volume can have", AttrSize, value)
		}
		size = q.Value()
	}
	if _, ok := params[ParamFsType]; !ok && fsType != "" {
		params[ParamFsType] = fsType
	}
	p, err := parseParameters(params)
	if err != nil {
		return volumeSpec{}, status.Errorf(codes.InvalidArgument, "inline volume attributes (besides %s): %s",
			AttrSize, status.Convert(err).Message())
	}
	r := &csi.CapacityRange{RequiredBytes: size}
	if size, err = imageSize(size, r, p); err != nil {
		return volumeSpec{}, err
	}
	return volumeSpec{ID: id, Size: size, Range: r, Params: p, Ephemeral: true}, nil
}

// ephemeralVolume returns the inline ephemeral volume a publish request
// names, making it when it does not exist yet (created). No room is
// ResourceExhausted, and nothing is left behind.
func (s *nodeServer) ephemeralVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*store, Volume, bool, error) {
	id := req.GetVolumeId()
	if req.GetVolumeCapability().GetBlock() != nil {
		return nil, Volume{}, false, status.Error(codes.InvalidArgument,
			"an inline ephemeral volume is a file system; the block access type is for claims with volumeMode: Block")
	}
	spec, err := ephemeralSpec(id, req.GetVolumeContext(), req.GetVolumeCapability().GetMount().GetFsType())
	if err != nil {
		return nil, Volume{}, false, err
	}
	st, ok := s.pools.named(spec.Params.pool())
	if !ok {
		return nil, Volume{}, false, status.Errorf(codes.ResourceExhausted,
			"%s %s for inline volume %s: this node serves pools %v", NoPoolMessage, spec.Params.pool(), id, s.pools.names)
	}
	if err := checkEnforcement(st, spec.Params); err != nil {
		return nil, Volume{}, false, err
	}
	if other := s.pools.holding(id); other != nil && other != st {
		return nil, Volume{}, false, status.Errorf(codes.AlreadyExists,
			"volume %s exists in pool %s, and the inline volume asks for %s=%s", id, other.pool, ParamPool, st.pool)
	}
	_, gerr := st.get(id)
	existed := gerr == nil
	v, err := st.create(spec)
	if err != nil {
		return nil, Volume{}, false, statusFor(err, fmt.Sprintf("making inline ephemeral volume %s on node %s", id, s.nodeID))
	}
	if !existed {
		klog.FromContext(ctx).V(2).Info("Inline ephemeral volume made", "capacityBytes", v.CapacityBytes, "pool", v.Pool,
			"pod", klog.KRef(req.GetVolumeContext()[metadataPrefix+"pod.namespace"], req.GetVolumeContext()[metadataPrefix+"pod.name"]))
		s.volumesChanged(true)
	}
	return st, v, !existed, nil
}

// rollbackEphemeral deletes an inline volume whose first publish failed.
func (s *nodeServer) rollbackEphemeral(ctx context.Context, st *store, id string) {
	if err := s.deleteEphemeral(ctx, st, id); err != nil {
		klog.FromContext(ctx).Error(err, "Cannot delete the inline ephemeral volume of a failed publish; the next start sweeps it")
	}
}

// deleteEphemeral deletes an inline volume that no target has.
func (s *nodeServer) deleteEphemeral(ctx context.Context, st *store, id string) error {
	if err := st.delete(id); err != nil {
		return statusFor(err, "deleting inline ephemeral volume "+id)
	}
	klog.FromContext(ctx).V(2).Info("Inline ephemeral volume deleted")
	s.volumesChanged(false)
	return nil
}

func (s *nodeServer) volumesChanged(less bool) {
	if s.changed != nil {
		s.changed(less)
	}
}

// sweepEphemeral deletes, at start, the inline ephemeral volumes that no
// pod will publish or unpublish again (see the top of this file). It runs
// before the driver serves, so it takes no volume locks.
func (s *nodeServer) sweepEphemeral(logger klog.Logger) {
	for _, st := range s.pools.all() {
		for _, v := range st.list() {
			if !v.Ephemeral {
				continue
			}
			keep, err := s.awaited(st, v)
			if err != nil {
				logger.Error(err, "Cannot tell whether an inline ephemeral volume is still used; kept", "volumeID", v.ID)
				continue
			}
			if keep {
				continue
			}
			if err := st.delete(v.ID); err != nil {
				logger.Error(err, "Cannot delete a leftover inline ephemeral volume", "volumeID", v.ID)
				continue
			}
			logger.Info("Deleted an inline ephemeral volume that no pod uses any more", "volumeID", v.ID)
		}
	}
}

// awaited reports whether an inline volume is mounted at one of its
// targets, or kubelet still has the pod volume directory of one.
func (s *nodeServer) awaited(st *store, v Volume) (bool, error) {
	src, err := st.mountSource(v)
	if err != nil {
		return false, err
	}
	for _, t := range v.Targets {
		if _, ours, err := s.mounter.Mounted(t.Path, src); err != nil || ours {
			return true, err
		}
		_, err := os.Stat(filepath.Dir(t.Path))
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
	}
	return false, nil
}
