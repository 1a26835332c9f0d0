package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// The Node service calls that look at or grow a published volume, where
// node.go publishes and unpublishes it: NodeGetVolumeStats and
// NodeExpandVolume.

// NodeGetVolumeStats reports a published volume's use, as its backend
// measures it; for a block volume, its size only. Bytes: total is the volume's capacity; used is what the
// backend counts (for a directory, a walk that adds up allocated blocks,
// like du: see measureDir for the cost); available is the smaller of what
// is left of the capacity and what is free on the file system, which the
// volumes share. Inodes, where the backend knows them: used is the number
// of entries in the volume, available the file system's free inodes, total
// their sum. A path that is not a target where the volume is mounted is
// NotFound.
func (s *nodeServer) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, p := req.GetVolumeId(), req.GetVolumePath()
	if err := validateVolumeID(id, "volume ID"); err != nil {
		return nil, err
	}
	if p == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	st := s.pools.of(id)
	v, err := st.get(id)
	if err != nil {
		return nil, statusFor(err, "looking up volume "+id)
	}
	src, err := st.mountSource(v)
	if err != nil {
		return nil, statusFor(err, "finding the volume's device")
	}
	if _, ok := v.target(p); !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s is not published at %s", id, p)
	}
	if _, ours, err := s.mounter.Mounted(p, src); err != nil {
		return nil, statusFor(err, "checking volume path")
	} else if !ours {
		return nil, status.Errorf(codes.NotFound, "volume %s is not mounted at %s any more", id, p)
	}
	if v.Backend == BackendBlock {
		// What a raw device holds is the pod's business: the total is
		// all CSI asks a block volume's stats for.
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: v.CapacityBytes}}}, nil
	}
	u, err := st.backend(v).Usage(id)
	if err != nil {
		return nil, statusFor(err, "measuring volume")
	}
	klog.FromContext(ctx).V(4).Info("Volume usage", "volumeID", id, "usedBytes", u.UsedBytes, "usedInodes", u.UsedInodes)
	resp := &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{
		Unit:      csi.VolumeUsage_BYTES,
		Total:     v.CapacityBytes,
		Used:      u.UsedBytes,
		Available: max(min(v.CapacityBytes-u.UsedBytes, u.FreeBytes), 0),
	}}}
	if u.Inodes {
		resp.Usage = append(resp.Usage, &csi.VolumeUsage{
			Unit:      csi.VolumeUsage_INODES,
			Total:     u.UsedInodes + u.FreeInodes,
			Used:      u.UsedInodes,
			Available: u.FreeInodes,
		})
	}
	return resp, nil
}

// NodeExpandVolume grows a published volume's file system to the size
// ControllerExpandVolume gave the volume. Only image volumes have a file
// system of their own to grow (online: the pod keeps running); for the
// others the controller step did everything and this answers the size.
// Codes: InvalidArgument without a volume ID or path; NotFound for an
// unknown volume or a path it is not published at; OutOfRange for a
// required size above the volume's, which ControllerExpandVolume must
// give first; FailedPrecondition when the file system can only grow
// offline here (ext4 without CAP_SYS_RESOURCE). That is CSI's "volume in
// use", and kubelet reads it so (operationexecutor/node_expander.go): it
// stops retrying while the volume stays mounted, does not fail the mount,
// and calls again after the next publish, which grows the volume offline
// first (expandUnpublished).
func (s *nodeServer) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id, p := req.GetVolumeId(), req.GetVolumePath()
	if err := validateVolumeID(id, "volume ID"); err != nil {
		return nil, err
	}
	if p == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := checkCapability(c); err != nil {
			return nil, err
		}
	}
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
	if _, ok := v.target(p); !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s is not published at %s", id, p)
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := checkAccessType(v, c); err != nil {
			return nil, err
		}
	}
	if want := req.GetCapacityRange().GetRequiredBytes(); want > v.CapacityBytes {
		return nil, status.Errorf(codes.OutOfRange,
			"volume %s has %d bytes and the request asks for %d: ControllerExpandVolume grows it first", id, v.CapacityBytes, want)
	}
	if ne, ok := st.backend(v).(nodeExpander); ok {
		if err := ne.NodeExpand(id, v.FsType); err != nil {
			return nil, statusFor(err, "growing the file system of volume "+id)
		}
		klog.FromContext(ctx).V(2).Info("Volume's file system grown", "volumeID", id, "capacityBytes", v.CapacityBytes)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: v.CapacityBytes}, nil
}
