package driver

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"
)

// The snapshot RPCs of the Controller service; snapshot.go has the
// records and their crash-safe layout, snapshotbackend.go what each
// backend makes of a snapshot.

// CreateSnapshot takes a snapshot of a ready volume of this node, in the
// volume's pool, with the snapshot's name as its ID (the external-snapshotter
// sends snapshot-<uuid>). It is ready when the call answers. Codes:
// InvalidArgument for a bad name or source ID, a parameter (none is
// supported but keys under csi.storage.k8s.io/, which are ignored) or an
// inline ephemeral source; NotFound when the source is not a ready volume
// here; AlreadyExists for the name of a snapshot of another volume;
// ResourceExhausted when a copy does not fit the pool's free capacity
// (snapshot.go); Aborted while the source or the snapshot is busy.
func (s *controllerServer) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	id, src := req.GetName(), req.GetSourceVolumeId()
	if err := validateVolumeID(id, "name"); err != nil {
		return nil, err
	}
	if err := validateVolumeID(src, "source_volume_id"); err != nil {
		return nil, err
	}
	if err := checkSnapshotParameters(req.GetParameters()); err != nil {
		return nil, err
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), "snapshotID", id, "volumeID", src)
	unlock, err := s.locks.lockSnapshot(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if sn, ok := s.pools.snapshot(id); ok {
		if sn.Source != src {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %s exists and is of volume %s, the request asks for one of volume %s",
				id, sn.Source, src)
		}
		return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(sn)}, nil
	}
	unlockSource, err := s.locks.lock(src)
	if err != nil {
		return nil, err
	}
	defer unlockSource()
	st := s.pools.of(src)
	v, err := st.get(src)
	switch {
	case errors.Is(err, errUnavailable):
		return nil, statusFor(err, "looking up source volume "+src)
	case err != nil:
		return nil, status.Errorf(codes.NotFound, "source volume %s is not a volume of node %s: %v", src, s.nodeID, err)
	case v.Ephemeral:
		return nil, status.Errorf(codes.InvalidArgument, "source volume %s is an inline ephemeral volume, of which no snapshot can be taken", src)
	}
	if other := s.pools.snapshotStore(id); other != nil && other != st {
		// A snapshot of that ID half made or half removed in another
		// pool: finish removing it first.
		if err := other.deleteSnapshot(id); err != nil {
			return nil, statusFor(err, "removing what is left of snapshot "+id+" in pool "+other.pool)
		}
	}
	sn, err := st.createSnapshot(id, v)
	if err != nil {
		return nil, statusFor(err, "taking snapshot "+id)
	}
	logger.V(2).Info("Snapshot ready", "sizeBytes", sn.SizeBytes, "pool", sn.Pool, "backend", sn.Backend)
	if sn.charge() > 0 {
		s.volumesChanged(true)
	}
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(sn)}, nil
}

// checkSnapshotParameters refuses every VolumeSnapshotClass parameter
// except the metadata keys under csi.storage.k8s.io/ (the
// external-snapshotter's --extra-create-metadata), which are ignored: no
// parameter is supported yet.
func checkSnapshotParameters(params map[string]string) error {
	for _, key := range slices.Sorted(maps.Keys(params)) {
		if !strings.HasPrefix(key, metadataPrefix) {
			return status.Errorf(codes.InvalidArgument,
				"unknown VolumeSnapshotClass parameter %q: snapshots take no parameters but keys under %q", key, metadataPrefix)
		}
	}
	return nil
}

// DeleteSnapshot removes a snapshot: its record, then its data. An unknown
// snapshot is success. Volumes made from it are independent of it and
// stay.
func (s *controllerServer) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if err := validateVolumeID(id, "snapshot ID"); err != nil {
		return nil, err
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), "snapshotID", id)
	unlock, err := s.locks.lockSnapshot(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st := s.pools.snapshotStore(id)
	if st == nil {
		st = s.pools.byName[DefaultPool]
	}
	sn, known := st.snapshot(id)
	if err := st.deleteSnapshot(id); err != nil {
		return nil, statusFor(err, "deleting snapshot "+id)
	}
	logger.V(2).Info("Snapshot deleted")
	if known && sn.charge() > 0 {
		s.volumesChanged(false)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots pages through the snapshots of all pools in ID order, as
// ListVolumes does, filtered by snapshot_id and source_volume_id when they
// are set: a filter nothing matches gives an empty list.
func (s *controllerServer) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "max_entries %d must not be negative", req.GetMaxEntries())
	}
	after, err := listAfter(req.GetStartingToken(), "ListSnapshots")
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{}
	for _, sn := range s.pools.listSnapshots() {
		if sn.ID <= after ||
			req.GetSnapshotId() != "" && sn.ID != req.GetSnapshotId() ||
			req.GetSourceVolumeId() != "" && sn.Source != req.GetSourceVolumeId() {
			continue
		}
		if req.GetMaxEntries() > 0 && len(resp.Entries) == int(req.GetMaxEntries()) {
			resp.NextToken = listTokenPrefix + resp.Entries[len(resp.Entries)-1].GetSnapshot().GetSnapshotId()
			break
		}
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(sn)})
	}
	return resp, nil
}

// snapshotSource locks and looks up the snapshot spec asks to restore,
// checks it (checkCopySource) and fills in spec's snapshot and size, as
// cloneSource does for a volume. The snapshot's lock is held until the
// copy is made: a DeleteSnapshot meanwhile answers Aborted.
func (s *controllerServer) snapshotSource(spec *volumeSpec, st *store) (unlock func(), err error) {
	unlock, err = s.locks.lockSnapshot(spec.Snapshot)
	if err != nil {
		return nil, err
	}
	sn, ok := s.pools.snapshot(spec.Snapshot)
	if ok {
		spec.Size, err = checkCopySource(snapshotCopySource(sn), st, *spec)
	} else {
		err = status.Errorf(codes.NotFound, "snapshot %s is not a snapshot of node %s", spec.Snapshot, s.nodeID)
	}
	if err != nil {
		unlock()
		return nil, err
	}
	spec.snapshot = &sn
	return unlock, nil
}

func csiSnapshot(sn Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     sn.ID,
		SourceVolumeId: sn.Source,
		SizeBytes:      sn.SizeBytes,
		CreationTime:   timestamppb.New(sn.Created),
		ReadyToUse:     true,
	}
}
