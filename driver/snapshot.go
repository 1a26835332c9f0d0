package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// Snapshots: CreateSnapshot keeps a copy of a ready volume, at one moment,
// in the pool of its source; CreateVolume with a snapshot content source
// makes a new volume from it. They live in a directory of their own, next
// to the volumes:
//
//	<data-root>/snapshots/<id>                the data
//	<data-root>/snapshots/.record-<id>.json   the record (Snapshot as JSON)
//	<data-root>/snapshots/.tmp-<id>           a record being written
//
// A snapshot ID is a volume ID in form (validateVolumeID), so it never
// starts with a '.': the data's name never clashes with a record or a
// temporary file, and the record of one ID never with the data of another
// (as <id>.json would, since an ID may end in ".json").
//
// What the data is depends on the source's backend (snapshotter,
// snapshotbackend.go): a read-only btrfs subvolume, a copied directory
// tree, or a copied image or block file.
//
// snapshots/ is the driver's own area, unlike volumes/ (which a person may
// fill by hand): nothing is there that the driver did not put there, so
// data without a record is always a snapshot the driver did not finish
// making or removing, and is removed. Crash safety needs no intent record:
//
//	CreateSnapshot: backend Snapshot (data made and durable)
//	                -> record written (temp file, fsync, rename, fsync of snapshots/)
//	DeleteSnapshot: record removed, fsync of snapshots/ -> backend DeleteSnapshot
//
// The record is the commit point of both: it is there, durably, only while
// the whole data is. A crash before it is written leaves data without a
// record, which start-up removes (and so does a retried CreateSnapshot or
// DeleteSnapshot, which hold the snapshot's lock, so no other call is
// making that data); a crash after a delete removed it leaves the same.
// A record without data, which only a person could make, is logged and
// dropped at start.
//
// Capacity: a snapshot that is a copy (directory, image and block volumes)
// takes its size, the source's, from the pool's free capacity as a volume
// does: reserved when it is made (ResourceExhausted when it does not fit),
// counted at start, released when it is deleted. A btrfs snapshot shares
// every extent with its source until one of them is written, so it
// reserves nothing; like a clone's, its extents only cost room as the two
// part ways, which the file system's free space shows.
const (
	snapshotsDir         = "snapshots"
	snapshotRecordPrefix = ".record-"
)

// Snapshot is the record of one snapshot, as stored in
// snapshots/.record-<id>.json.
type Snapshot struct {
	ID string `json:"id"`
	// Source is the ID of the volume the snapshot was taken of; that
	// volume may be gone since.
	Source string `json:"sourceVolumeId"`
	// Pool is the pool whose data root holds the snapshot, as for a
	// Volume: a record is loaded with the name of the pool it is in.
	Pool string `json:"pool,omitempty"`
	// Backend, FsType and Block are the source's, which a volume made from
	// the snapshot must have.
	Backend string `json:"backend"`
	FsType  string `json:"fsType,omitempty"`
	Block   bool   `json:"block,omitempty"`
	// SizeBytes is the source's size when the snapshot was taken: the
	// least size of a volume made from it.
	SizeBytes int64     `json:"sizeBytes"`
	Created   time.Time `json:"created"`

	// pending marks a snapshot whose data may be on disk without a
	// committed record: being made, or being removed.
	pending bool
}

// charge is what the snapshot reserves of the pool's capacity.
func (sn *Snapshot) charge() int64 {
	if sn.Backend == BackendBtrfs {
		return 0
	}
	return sn.SizeBytes
}

func snapshotName(id string) string { return path.Join(snapshotsDir, id) }

func snapshotRecordName(id string) string {
	return path.Join(snapshotsDir, snapshotRecordPrefix+id+recordExt)
}

// snapshot returns a copy of a committed snapshot's record.
func (s *store) snapshot(id string) (Snapshot, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sn, ok := s.snapshots[id]
	if !ok || sn.pending {
		return Snapshot{}, false
	}
	return *sn, true
}

// listSnapshots returns copies of the committed snapshots, sorted by ID.
func (s *store) listSnapshots() []Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Snapshot, 0, len(s.snapshots))
	for _, sn := range s.snapshots {
		if !sn.pending {
			out = append(out, *sn)
		}
	}
	slices.SortFunc(out, func(a, b Snapshot) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// hasSnapshot reports whether the store has snapshot id in any state, or a
// record of it that cannot be read.
func (s *store) hasSnapshot(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.snapshots[id]
	_, bad := s.badSnapshots[id]
	return ok || bad
}

// snapshotAvailable returns errUnavailable for a snapshot whose record
// cannot be read: its data is kept, and nothing is done to it.
func (s *store) snapshotAvailable(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reason, bad := s.badSnapshots[id]; bad {
		return fmt.Errorf("%w: snapshot %s: %s", errUnavailable, id, reason)
	}
	return nil
}

// createSnapshot takes snapshot id of the ready volume src, or returns the
// snapshot of that ID if it is of src already. The caller holds the locks
// of the snapshot and of src. Errors: errIncompatible (the ID is a
// snapshot of another volume), errNoSpace, errUnsupported.
func (s *store) createSnapshot(id string, src Volume) (Snapshot, error) {
	if err := s.snapshotAvailable(id); err != nil {
		return Snapshot{}, err
	}
	s.mu.Lock()
	var old Snapshot
	found, exists := s.snapshots[id]
	if exists {
		old = *found
	}
	s.mu.Unlock()
	switch {
	case exists && !old.pending && old.Source != src.ID:
		return old, fmt.Errorf("%w: snapshot %s is of volume %s, the request asks for one of volume %s",
			errIncompatible, id, old.Source, src.ID)
	case exists && !old.pending:
		return old, nil
	case exists:
		// A create or delete that failed half-way: finish removing it.
		if err := s.dropSnapshot(id); err != nil {
			return Snapshot{}, err
		}
	}
	b, ok := s.backends[src.Backend].(snapshotter)
	if !ok {
		return Snapshot{}, fmt.Errorf("%w: the %s backend of volume %s cannot take snapshots", errUnsupported, src.Backend, src.ID)
	}
	sn := &Snapshot{
		ID:        id,
		Source:    src.ID,
		Pool:      s.pool,
		Backend:   src.Backend,
		FsType:    src.FsType,
		Block:     src.Backend == BackendBlock,
		SizeBytes: src.CapacityBytes,
		Created:   time.Now().UTC(),
		pending:   true,
	}
	s.mu.Lock()
	err := s.take(sn.charge())
	if err == nil {
		s.snapshots[id] = sn
	}
	s.mu.Unlock()
	if err != nil {
		return Snapshot{}, err
	}
	committed, err := s.makeSnapshot(b, *sn)
	if err != nil {
		if rerr := s.dropSnapshot(id); rerr != nil {
			err = errors.Join(err, fmt.Errorf("rolling back: %w", rerr))
		}
		return Snapshot{}, err
	}
	return committed, nil
}

// makeSnapshot has the backend make the snapshot's data, then commits it
// by writing its record.
func (s *store) makeSnapshot(b snapshotter, sn Snapshot) (Snapshot, error) {
	if err := s.ensureSnapshotsDir(); err != nil {
		return Snapshot{}, err
	}
	// Data of this ID without a record is a leftover (see above).
	if err := s.removeSnapshotData(sn.ID); err != nil {
		return Snapshot{}, err
	}
	if err := b.Snapshot(sn); err != nil {
		return Snapshot{}, err
	}
	s.step("snapshot:data")
	sn.pending = false
	if err := s.writeSnapshotRecord(&sn); err != nil {
		return Snapshot{}, err
	}
	s.mu.Lock()
	s.snapshots[sn.ID] = &sn
	s.mu.Unlock()
	s.step("snapshot:commit")
	return sn, nil
}

// deleteSnapshot removes a snapshot: its record, durably, then its data.
// An unknown snapshot is no error (but data left of it is removed). The
// caller holds the snapshot's lock.
func (s *store) deleteSnapshot(id string) error {
	if err := s.snapshotAvailable(id); err != nil {
		return err
	}
	s.mu.Lock()
	sn, ok := s.snapshots[id]
	committed := ok && !sn.pending
	s.mu.Unlock()
	if !ok {
		return s.removeSnapshotData(id)
	}
	if committed {
		if err := s.root.Remove(snapshotRecordName(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing snapshot record: %w", err)
		}
		if err := syncDir(s.root, snapshotsDir); err != nil {
			return err
		}
		s.mu.Lock()
		next := *sn
		next.pending = true
		s.snapshots[id] = &next
		s.mu.Unlock()
		s.step("snapshot:unrecord")
	}
	return s.dropSnapshot(id)
}

// dropSnapshot removes the data of a snapshot without a committed record,
// then forgets it and releases what it reserved.
func (s *store) dropSnapshot(id string) error {
	s.mu.Lock()
	sn := s.snapshots[id]
	s.mu.Unlock()
	var b snapshotter
	if sn != nil {
		b, _ = s.backends[sn.Backend].(snapshotter)
	}
	var err error
	if b != nil {
		err = b.DeleteSnapshot(id)
	} else {
		err = s.removeSnapshotData(id)
	}
	if err != nil {
		return err
	}
	s.step("snapshot:undata")
	s.mu.Lock()
	defer s.mu.Unlock()
	if sn, ok := s.snapshots[id]; ok {
		s.allocated -= sn.charge()
		delete(s.snapshots, id)
	}
	return nil
}

// ensureSnapshotsDir makes snapshots/ if it is missing, durably.
func (s *store) ensureSnapshotsDir() error {
	if _, err := s.root.Stat(snapshotsDir); err == nil {
		return nil
	}
	if err := s.root.MkdirAll(snapshotsDir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", snapshotsDir, err)
	}
	return syncDir(s.root, ".")
}

// writeSnapshotRecord writes a snapshot's record atomically: temporary
// file, fsync, rename, fsync of snapshots/.
func (s *store) writeSnapshotRecord(sn *Snapshot) error {
	data, err := json.MarshalIndent(sn, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding snapshot record: %w", err)
	}
	tmp := path.Join(snapshotsDir, tmpPrefix+sn.ID)
	if err := s.writeSynced(tmp, append(data, '\n')); err != nil {
		_ = s.root.Remove(tmp)
		return fmt.Errorf("writing snapshot record: %w", err)
	}
	if err := s.root.Rename(tmp, snapshotRecordName(sn.ID)); err != nil {
		_ = s.root.Remove(tmp)
		return fmt.Errorf("renaming snapshot record: %w", err)
	}
	return syncDir(s.root, snapshotsDir)
}

// loadSnapshots reads the snapshot records and removes temporary files. It
// runs before the backends are set up, which the records may need.
func (s *store) loadSnapshots(logger klog.Logger) error {
	entries, err := fs.ReadDir(s.root.FS(), snapshotsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading snapshots: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		switch id := snapshotRecordID(name); {
		case strings.HasPrefix(name, tmpPrefix):
			if err := s.root.Remove(path.Join(snapshotsDir, name)); err != nil {
				return fmt.Errorf("removing temporary snapshot record: %w", err)
			}
			logger.V(2).Info("Removed a temporary snapshot record left by an interrupted write", "file", name)
		case id != "":
			sn, err := s.readSnapshotRecord(id)
			if err != nil {
				logger.Error(err, "Cannot read a snapshot record; that snapshot is unavailable and its data kept", "snapshotID", id)
				s.badSnapshots[id] = err.Error()
				continue
			}
			s.snapshots[id] = sn
			s.allocated += sn.charge()
		}
	}
	return nil
}

// snapshotRecordID returns the snapshot ID of a record's file name, or "".
func snapshotRecordID(name string) string {
	id, ok := strings.CutPrefix(name, snapshotRecordPrefix)
	if id, ok2 := strings.CutSuffix(id, recordExt); ok && ok2 && validateVolumeID(id, "record name") == nil {
		return id
	}
	return ""
}

func (s *store) readSnapshotRecord(id string) (*Snapshot, error) {
	name := snapshotRecordName(id)
	data, err := s.root.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("reading snapshot record: %w", err)
	}
	sn := &Snapshot{}
	if err := json.Unmarshal(data, sn); err != nil {
		return nil, fmt.Errorf("snapshot record %s is corrupt: %w", path.Join(s.rootPath, name), err)
	}
	if sn.ID != id || sn.Source == "" || sn.Backend == "" || sn.SizeBytes < 0 {
		return nil, fmt.Errorf("snapshot record %s is not valid (id %q, source %q, backend %q, size %d)",
			path.Join(s.rootPath, name), sn.ID, sn.Source, sn.Backend, sn.SizeBytes)
	}
	sn.Pool = s.pool
	return sn, nil
}

// sweepSnapshots removes snapshot data without a record (a create or
// delete cut short) and drops records without data. It runs once the
// backends are set up.
func (s *store) sweepSnapshots(logger klog.Logger) error {
	entries, err := fs.ReadDir(s.root.FS(), snapshotsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading snapshots: %w", err)
	}
	present := map[string]bool{}
	for _, e := range entries {
		id := e.Name()
		switch {
		case strings.HasPrefix(id, "."):
			if snapshotRecordID(id) == "" {
				logger.Info("Ignoring an unexpected file among the snapshots", "file", path.Join(s.rootPath, snapshotsDir, id))
			}
		case validateVolumeID(id, "snapshot") != nil:
			logger.Info("Ignoring an unexpected file among the snapshots", "file", path.Join(s.rootPath, snapshotsDir, id))
		case s.snapshots[id] != nil:
			present[id] = true
		case s.badSnapshots[id] != "":
		default:
			if err := s.removeSnapshotData(id); err != nil {
				return fmt.Errorf("removing snapshot %s, left without a record: %w", id, err)
			}
			logger.Info("Removed the data of a snapshot left without a record by an interrupted create or delete", "snapshotID", id)
		}
	}
	for id, sn := range s.snapshots {
		if present[id] {
			continue
		}
		logger.Error(nil, "Snapshot record without data; dropping it", "snapshotID", id, "sourceVolumeID", sn.Source)
		if err := s.root.Remove(snapshotRecordName(id)); err != nil {
			return fmt.Errorf("removing the record of snapshot %s, which has no data: %w", id, err)
		}
		s.allocated -= sn.charge()
		delete(s.snapshots, id)
	}
	return syncDir(s.root, snapshotsDir)
}

// makeData makes the data of volume v as its record says: a clone of a
// volume, a volume restored from a snapshot, or a new one.
func (s *store) makeData(v Volume, nv newVolume) error {
	b := s.backend(v)
	switch {
	case v.ClonedFrom != "":
		c, ok := b.(cloner)
		if !ok {
			return fmt.Errorf("%w: the %s backend cannot make clones", errUnsupported, v.Backend)
		}
		return c.Clone(v.ClonedFrom, nv)
	case v.RestoredFrom != "":
		r, ok := b.(snapshotter)
		if !ok {
			return fmt.Errorf("%w: the %s backend cannot restore snapshots", errUnsupported, v.Backend)
		}
		sn, found := s.snapshot(v.RestoredFrom)
		if !found {
			return fmt.Errorf("%w: snapshot %s", errNotFound, v.RestoredFrom)
		}
		return r.Restore(sn, nv)
	}
	return b.Create(nv)
}

// restorerFor returns the backend that restores spec's snapshot: the
// snapshot's own.
func (s *store) restorerFor(spec volumeSpec) (backend, error) {
	if spec.snapshot == nil {
		return nil, fmt.Errorf("%w: snapshot %s was not looked up", errNotFound, spec.Snapshot)
	}
	return backendThat[snapshotter](s, spec.snapshot.Backend, "restore snapshots")
}

// snapshotStore returns the store that holds snapshot id in any state, or
// nil.
func (p *pools) snapshotStore(id string) *store {
	for _, s := range p.all() {
		if s.hasSnapshot(id) {
			return s
		}
	}
	return nil
}

// snapshot returns a committed snapshot of any pool.
func (p *pools) snapshot(id string) (Snapshot, bool) {
	for _, s := range p.all() {
		if sn, ok := s.snapshot(id); ok {
			return sn, true
		}
	}
	return Snapshot{}, false
}

// listSnapshots returns the committed snapshots of all pools, sorted by
// ID.
func (p *pools) listSnapshots() []Snapshot {
	var all []Snapshot
	for _, s := range p.all() {
		all = append(all, s.listSnapshots()...)
	}
	slices.SortFunc(all, func(a, b Snapshot) int { return strings.Compare(a.ID, b.ID) })
	return all
}
