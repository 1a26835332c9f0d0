package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"
)

// The store keeps one record per volume and the volume's data:
//
//	<data-root>/volumes/<id>/      the data, bind-mounted into pods
//	<data-root>/meta/<id>.json     the record (Volume as JSON)
//
// Snapshots of volumes live in snapshots/, with records of their own and
// their own crash scheme (snapshot.go).
//
// The data is made, resized, measured and removed by the volume's backend
// (backend.go), which the record names: a plain directory, or a btrfs
// subvolume with a qgroup limit.
//
// Every record file is written to a temporary file in meta/ (name starting
// with tmpPrefix, which no volume ID can start with), fsynced and renamed
// into place, so a record on disk is always a whole old or a whole new
// version. Temporary files left by a crash are removed at start.
//
// Crash safety comes from where a volume's record lies, each move made
// durable (an fsync of meta/, or the backend's own) before the next step:
//
//	CreateVolume: meta/.creating-<id> -> backend Create -> rename to meta/<id>.json
//	DeleteVolume: rename meta/<id>.json to meta/.deleting-<id> -> backend Delete
//	              -> remove meta/.deleting-<id> (not synced)
//	ControllerExpandVolume: backend Expand -> rewrite meta/<id>.json
//
// A record is written once, whole and in its final form; after that a
// create or delete only renames it, and a rename is atomic and needs no
// fsync of the file. So a pair of CreateVolume and DeleteVolume costs six
// fsyncs: the record's contents once; meta/ three times (once the creating
// record is there, after the commit and after the rename to deleting); and
// the backend's own in Create and in Delete. (It used to be nine: each state
// a rewrite of the record, two fsyncs each, and the removal synced.)
//
// Why each step is safe to lose in a power loss:
//
//   - meta/<id>.json is the commit point of a create and the only record a
//     CO ever sees, since CreateVolume answers after the rename is durable.
//     The backend's data is durable before the rename starts, so a
//     committed record never names missing data.
//   - meta/.creating-<id> is durable before the backend starts, so data the
//     backend made (whole or partly) always has a record that says it is
//     uncommitted; the same holds of meta/.deleting-<id> and data partly
//     removed. At start, and when a CreateVolume or DeleteVolume is
//     retried, such a record makes the store delete the data and then the
//     record: an interrupted create rolls back, an interrupted delete rolls
//     forward. A crash during that cleanup leaves the record, and the next
//     start does it again (backend Delete of missing data is no error).
//   - Removing meta/.deleting-<id> is not synced: the data is durably gone
//     first, so if the removal is lost, the record comes back only to have
//     the cleanup find nothing to delete. DeleteVolume is durable once the
//     rename to .deleting- is. The next fsync of meta/ (any operation's)
//     makes the removal durable too, before a new record of the same ID
//     could be committed.
//   - meta/.creating-<id> and meta/<id>.json never both exist (a rename
//     moves one to the other), nor do meta/<id>.json and
//     meta/.deleting-<id>; a leftover next to a committed record, which
//     only a person could make, is removed at start in favour of the
//     committed record.
//
// Records written by earlier versions kept every state in meta/<id>.json
// (the "state" field); such records in state creating or deleting are
// cleaned up the same way. A directory without any record is never the
// driver's own half-made state, so it is reported and left alone: the
// store never deletes data it cannot account for.
//
// All paths go through an os.Root opened on the data root, so even a bug in
// ID validation could not reach a file outside it.
//
// Locking: s.mu guards the in-memory map and the counters only; disk I/O
// happens outside it. Concurrent operations share the fsyncs of meta/
// (dirSync, a group commit). Callers hold the volume's lock (volumeLocks)
// for every call that changes a volume, which serializes the writes of one
// record.

const (
	volumesDir = "volumes"
	metaDir    = "meta"
	tmpPrefix  = ".tmp-"
	recordExt  = ".json"
)

// Volume states in a record.
const (
	stateCreating = "creating"
	stateReady    = "ready"
	stateDeleting = "deleting"
)

// Sentinel errors of the store, mapped to gRPC codes by the handlers.
var (
	errNotFound     = errors.New("volume not found")
	errIncompatible = errors.New("volume exists with different parameters")
	errNoSpace      = errors.New("not enough capacity on this node")
	errDeleting     = errors.New("volume is being deleted")
	errOrphanDir    = errors.New("volume directory exists without a record")
	errUnavailable  = errors.New("volume is unavailable")
	errUnsupported  = errors.New("not supported here")
	errOfflineOnly  = errors.New("can only grow offline here")
)

// Volume is the record of one volume, as stored in meta/<id>.json.
type Volume struct {
	ID string `json:"id"`
	// Backend names what holds the volume's data: BackendDirectory,
	// BackendBtrfs, BackendImage or BackendBlock. Records written before there were backends have none
	// and load as BackendDirectory.
	Backend string `json:"backend"`
	// Pool names the pool whose data root holds the volume (pools.go).
	// The record's place decides: a record is loaded with the name of the
	// pool it is found in, so a data root can be renamed. Records written
	// before there were pools have none.
	Pool string `json:"pool,omitempty"`
	// State is "creating", "ready" or "deleting"; only ready volumes are
	// visible through the CSI API.
	State         string `json:"state"`
	CapacityBytes int64  `json:"capacityBytes"`
	// FsType is the file system of a BackendImage volume.
	FsType string `json:"fsType,omitempty"`
	// DirectoryMode is the octal permission the directory was created with.
	DirectoryMode string    `json:"directoryMode"`
	PVCName       string    `json:"pvcName,omitempty"`
	PVCNamespace  string    `json:"pvcNamespace,omitempty"`
	PVName        string    `json:"pvName,omitempty"`
	Created       time.Time `json:"created"`
	// Targets are the paths the volume is published at (or is being
	// published at: a target is recorded before it is mounted).
	Targets []Target `json:"targets,omitempty"`
	// Ephemeral marks a CSI inline ephemeral volume (ephemeral.go): made
	// by NodePublishVolume and deleted by NodeUnpublishVolume, with no PV.
	Ephemeral bool `json:"ephemeral,omitempty"`
	// ClonedFrom is the ID of the volume this one was made a copy of
	// (clone.go), which CreateVolume reports as its content source.
	ClonedFrom string `json:"clonedFrom,omitempty"`
	// RestoredFrom is the ID of the snapshot this volume was made from
	// (snapshot.go), which CreateVolume reports as its content source.
	RestoredFrom string `json:"restoredFrom,omitempty"`
}

// Target is one NodePublishVolume target of a volume.
type Target struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// AccessMode is the CSI access mode name the target was published with.
	AccessMode string `json:"accessMode"`
	// MountOptions are the mount options other than ro and rw the target
	// was published with, sorted and comma-separated (a string, so that
	// Targets compare with ==).
	MountOptions string `json:"mountOptions,omitempty"`
}

func (v *Volume) clone() Volume {
	c := *v
	c.Targets = slices.Clone(v.Targets)
	return c
}

func (v *Volume) target(p string) (Target, bool) {
	i := slices.IndexFunc(v.Targets, func(t Target) bool { return t.Path == p })
	if i < 0 {
		return Target{}, false
	}
	return v.Targets[i], true
}

// volumeSpec is what CreateVolume asks the store for.
type volumeSpec struct {
	ID     string
	Size   int64              // bytes to allocate for a new volume
	Range  *csi.CapacityRange // an existing volume must fit it
	Params volumeParams
	// Ephemeral asks for an inline ephemeral volume (Volume.Ephemeral).
	Ephemeral bool
	// Source is the ID of the volume to clone, from the request's content
	// source; source is its record, which the caller looked up (and
	// checked, checkCloneSource) under its lock. A spec with a Source and
	// no source may only find its volume made already.
	Source string
	source *Volume
	// Snapshot is the ID of the snapshot to restore, from the request's
	// content source; snapshot is its record, looked up and checked as
	// source is.
	Snapshot string
	snapshot *Snapshot
}

type store struct {
	// pool is the name of the pool this store is (pools.go).
	pool     string
	root     *os.Root
	rootPath string
	// realRoot is rootPath with symlinks resolved.
	realRoot string
	// backends are those this data root serves, by name; defaultBackend
	// makes new volumes (openBackends).
	backends       map[string]backend
	defaultBackend backend
	// lock is the open lock file of the data root (lockDataRoot).
	lock *os.File
	// metaSync makes changes to meta/ durable, one fsync for concurrent
	// callers.
	metaSync *dirSync
	// identity names the data root (loadIdentity).
	identity string
	// afterStep, when set (by tests), runs after each step of create and
	// delete, named "create:intent" (the creating record is durable),
	// "create:mkdir" (the backend made the data), "create:commit",
	// "delete:intent" (the deleting record is durable), "delete:rmdir" (the
	// backend removed the data), "delete:record" (the record is removed,
	// not durably).
	afterStep func(step string)

	mu        sync.Mutex
	volumes   map[string]*Volume
	capacity  int64
	allocated int64
	// unavailable holds volumes whose record was set aside as corrupt
	// (setAside), by ID, with the reason. Their directories are kept;
	// nothing is done to them until the record is restored.
	unavailable map[string]string
	// snapshots are the snapshots of this pool (snapshot.go), by ID;
	// badSnapshots those whose record cannot be read, with the reason.
	snapshots    map[string]*Snapshot
	badSnapshots map[string]string
}

// storeConfig is what openStore needs.
type storeConfig struct {
	// Pool is the pool's name; "" means DefaultPool.
	Pool     string
	RootPath string
	// Holder says who takes the data root's lock (lockDataRoot).
	Holder string
	// Capacity is Config.Capacity.
	Capacity int64
	// Backend is Config.Backend; Backends are offered besides the
	// built-in ones (tests).
	Backend  string
	Backends []backend
}

// openStore opens (creating if needed) the data root, takes its lock,
// reloads the records, sets up the backends, finishes or rolls back
// interrupted work and sets the capacity: cfg.Capacity when positive, else
// the free space of the data root's file system plus what existing volumes
// already hold (see Config.Capacity).
func openStore(logger klog.Logger, cfg storeConfig) (*store, error) {
	rootPath := cfg.RootPath
	if err := os.MkdirAll(rootPath, 0o700); err != nil {
		return nil, fmt.Errorf("creating data root: %w", err)
	}
	root, err := os.OpenRoot(rootPath)
	if err != nil {
		return nil, fmt.Errorf("opening data root: %w", err)
	}
	lock, err := lockDataRoot(root, rootPath, cfg.Holder)
	if err != nil {
		_ = root.Close()
		return nil, err
	}
	pool := cfg.Pool
	if pool == "" {
		pool = DefaultPool
	}
	s := &store{
		pool: pool, root: root, rootPath: rootPath, lock: lock, metaSync: newDirSync(root, metaDir),
		volumes: map[string]*Volume{}, unavailable: map[string]string{},
		snapshots: map[string]*Snapshot{}, badSnapshots: map[string]string{},
	}
	if err := s.init(logger, cfg); err != nil {
		_ = s.close()
		return nil, err
	}
	return s, nil
}

func (s *store) init(logger klog.Logger, cfg storeConfig) error {
	realRoot, err := filepath.EvalSymlinks(s.rootPath)
	if err != nil {
		return fmt.Errorf("resolving data root: %w", err)
	}
	s.realRoot = realRoot
	for _, dir := range []string{volumesDir, metaDir} {
		if err := s.root.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", dir, err)
		}
	}
	identity, err := s.loadIdentity()
	if err != nil {
		return err
	}
	s.identity = identity
	if err := s.load(logger); err != nil {
		return err
	}
	if err := s.loadSnapshots(logger); err != nil {
		return err
	}
	if err := s.openBackends(logger, cfg.Backend, cfg.Backends); err != nil {
		return err
	}
	if err := s.recover(logger); err != nil {
		return err
	}
	if err := s.sweepSnapshots(logger); err != nil {
		return err
	}
	s.activate(logger)
	s.checkDirs(logger)
	capacity := cfg.Capacity
	if capacity <= 0 {
		free, err := freeBytes(s.rootPath)
		if err != nil {
			return fmt.Errorf("measuring free space of the data root: %w", err)
		}
		capacity = free + s.allocated
	}
	s.capacity = capacity
	return nil
}

func volumeName(id string) string { return path.Join(volumesDir, id) }

// volumePath is the absolute path of a volume's directory, where the
// backends keep it.
func (s *store) volumePath(id string) string { return path.Join(s.rootPath, volumesDir, id) }

// publishPath is the directory to bind-mount for a volume.
func (s *store) publishPath(v Volume) string { return s.backend(v).Path(v.ID) }

// get returns a copy of a ready volume's record.
func (s *store) get(id string) (Volume, error) {
	if err := s.available(id); err != nil {
		return Volume{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.volumes[id]
	if !ok || v.State != stateReady {
		return Volume{}, errNotFound
	}
	return v.clone(), nil
}

// list returns copies of all ready volumes, sorted by ID.
func (s *store) list() []Volume {
	s.mu.Lock()
	defer s.mu.Unlock()
	vols := make([]Volume, 0, len(s.volumes))
	for _, v := range s.volumes {
		if v.State == stateReady {
			vols = append(vols, v.clone())
		}
	}
	slices.SortFunc(vols, func(a, b Volume) int { return strings.Compare(a.ID, b.ID) })
	return vols
}

func (s *store) usage() (capacity, allocated int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.capacity, s.allocated
}

// create makes a volume or returns the existing one when it is compatible
// with spec. Errors: errIncompatible, errNoSpace, errDeleting, errOrphanDir.
func (s *store) create(spec volumeSpec) (Volume, error) {
	if err := s.available(spec.ID); err != nil {
		return Volume{}, err
	}
	s.mu.Lock()
	old, exists := s.volumes[spec.ID]
	var oldVolume Volume
	if exists {
		oldVolume = old.clone()
	}
	s.mu.Unlock()
	switch {
	case exists && oldVolume.State == stateReady:
		if err := compatible(oldVolume, spec); err != nil {
			return oldVolume, err
		}
		return oldVolume, sameSource(oldVolume, spec)
	case exists && oldVolume.State == stateDeleting:
		return Volume{}, errDeleting
	case exists:
		// A create that failed and could not roll back: finish the
		// rollback, then start over.
		if err := s.remove(spec.ID); err != nil {
			return Volume{}, err
		}
	}
	switch _, err := s.root.Lstat(volumeName(spec.ID)); {
	case err == nil:
		return Volume{}, fmt.Errorf("%w: %s", errOrphanDir, s.volumePath(spec.ID))
	case !errors.Is(err, fs.ErrNotExist):
		return Volume{}, fmt.Errorf("checking volume directory: %w", err)
	}

	b, err := s.backendFor(spec.Params)
	switch {
	case spec.Source != "":
		b, err = s.clonerFor(spec)
	case spec.Snapshot != "":
		b, err = s.restorerFor(spec)
	}
	if err != nil {
		return Volume{}, err
	}
	v := &Volume{
		ID:            spec.ID,
		Backend:       b.Name(),
		FsType:        spec.Params.FsType,
		Pool:          s.pool,
		State:         stateCreating,
		CapacityBytes: spec.Size,
		DirectoryMode: fmt.Sprintf("%04o", spec.Params.DirectoryMode),
		PVCName:       spec.Params.PVCName,
		PVCNamespace:  spec.Params.PVCNamespace,
		PVName:        spec.Params.PVName,
		Ephemeral:     spec.Ephemeral,
		ClonedFrom:    spec.Source,
		RestoredFrom:  spec.Snapshot,
		Created:       time.Now().UTC().Truncate(time.Second),
	}
	if err := s.reserve(v); err != nil {
		return Volume{}, err
	}
	if err := s.createOnDisk(v, spec.Params.DirectoryMode); err != nil {
		if rerr := s.remove(spec.ID); rerr != nil {
			err = errors.Join(err, fmt.Errorf("rolling back: %w", rerr))
		}
		return Volume{}, err
	}
	return v.clone(), nil
}

// reserve adds a new volume (state creating) to the map if it fits.
func (s *store) reserve(v *Volume) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.take(v.CapacityBytes); err != nil {
		return err
	}
	s.volumes[v.ID] = v
	return nil
}

// take allocates n bytes of the capacity if they are free. Call with s.mu
// held.
func (s *store) take(n int64) error {
	if free := s.capacity - s.allocated; n > free {
		return fmt.Errorf("%w: %d bytes requested, %d of %d bytes free", errNoSpace, n, free, s.capacity)
	}
	s.allocated += n
	return nil
}

// expand raises a ready volume's size to size bytes; a volume that large
// already is returned as it is, since sizes never shrink. The growth must
// fit the free capacity. The backend raises its limit before the record
// says the new size, so a crash between the two leaves a limit above the
// recorded size, never below it, and a retry finishes the job.
// Errors: errNotFound, errNoSpace.
func (s *store) expand(id string, size int64) (Volume, error) {
	v, err := s.get(id)
	if err != nil || size <= v.CapacityBytes {
		return v, err
	}
	grow := size - v.CapacityBytes
	s.mu.Lock()
	err = s.take(grow)
	s.mu.Unlock()
	if err != nil {
		return Volume{}, err
	}
	release := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.allocated -= grow
	}
	if err := s.backend(v).Expand(id, size); err != nil {
		release()
		return Volume{}, err
	}
	next, err := s.update(id, func(v *Volume) { v.CapacityBytes = size })
	if err != nil {
		release()
		return Volume{}, err
	}
	return next, nil
}

// createOnDisk writes the record under its creating name, has the backend
// make the data and commits by renaming the record to its own name. The
// record is written in its final form (state ready) from the start: only
// its name says it is not committed yet.
func (s *store) createOnDisk(v *Volume, mode fs.FileMode) error {
	ready := v.clone()
	ready.State = stateReady
	if err := s.writeFile(creatingName(v.ID), &ready); err != nil {
		return err
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	s.step("create:intent")
	nv := newVolume{ID: v.ID, Size: v.CapacityBytes, Mode: mode, FsType: v.FsType}
	if err := s.makeData(*v, nv); err != nil {
		return err
	}
	s.step("create:mkdir")
	if err := s.moveRecord(creatingName(v.ID), recordName(v.ID)); err != nil {
		return err
	}
	s.mu.Lock()
	s.volumes[v.ID] = &ready
	s.mu.Unlock()
	s.step("create:commit")
	return nil
}

// delete removes a volume's directory and record. An unknown volume is not
// an error: deleting is idempotent. An unavailable one is refused: its
// directory holds data whose record is set aside, and only a person who
// looked at both may decide it goes.
func (s *store) delete(id string) error {
	if err := s.available(id); err != nil {
		return err
	}
	s.mu.Lock()
	v, ok := s.volumes[id]
	state := ""
	if ok {
		state = v.State
	}
	s.mu.Unlock()
	if !ok {
		return nil
	}
	if state == stateReady {
		if err := s.moveRecord(recordName(id), deletingName(id)); err != nil {
			return err
		}
		s.mu.Lock()
		deleting := v.clone()
		deleting.State = stateDeleting
		s.volumes[id] = &deleting
		s.mu.Unlock()
		s.step("delete:intent")
	}
	return s.remove(id)
}

// remove deletes a volume's data, then its record, then forgets it. It is
// called only for volumes that are not ready, whose record, if it comes
// back after a power loss, makes recover call it again.
func (s *store) remove(id string) error {
	s.mu.Lock()
	b := s.defaultBackend
	if v, ok := s.volumes[id]; ok {
		b = s.backends[v.Backend]
	}
	s.mu.Unlock()
	if err := b.Delete(id); err != nil {
		return err
	}
	s.step("delete:rmdir")
	if err := s.dropRecord(id); err != nil {
		return err
	}
	s.step("delete:record")
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.volumes[id]; ok {
		s.allocated -= v.CapacityBytes
		delete(s.volumes, id)
	}
	return nil
}

// update applies change to a copy of a volume's record, writes the copy and
// then makes it the current record, so memory never runs ahead of disk.
func (s *store) update(id string, change func(*Volume)) (Volume, error) {
	s.mu.Lock()
	v, ok := s.volumes[id]
	if !ok || v.State != stateReady {
		// Only a committed record lives at meta/<id>.json; writing
		// there for a create or delete under way would commit it.
		s.mu.Unlock()
		return Volume{}, errNotFound
	}
	next := v.clone()
	s.mu.Unlock()
	change(&next)
	if err := s.writeRecord(&next); err != nil {
		return Volume{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.volumes[id] = &next
	return next.clone(), nil
}

// setTarget records t as a target of a ready volume, replacing a target
// with the same path.
func (s *store) setTarget(id string, t Target) error {
	_, err := s.update(id, func(v *Volume) {
		v.Targets = slices.DeleteFunc(v.Targets, func(old Target) bool { return old.Path == t.Path })
		v.Targets = append(v.Targets, t)
	})
	return err
}

// dropTarget forgets a target of a volume; a target not recorded is fine.
func (s *store) dropTarget(id, targetPath string) error {
	v, err := s.get(id)
	if err != nil {
		return err
	}
	if _, ok := v.target(targetPath); !ok {
		return nil
	}
	_, err = s.update(id, func(v *Volume) {
		v.Targets = slices.DeleteFunc(v.Targets, func(t Target) bool { return t.Path == targetPath })
	})
	return err
}

func (s *store) step(name string) {
	if s.afterStep != nil {
		s.afterStep(name)
	}
}

// check reports whether the data root can still be read and its records
// still be made durable.
func (s *store) check() error {
	if err := s.metaSync.failed(); err != nil {
		return err
	}
	_, err := s.root.Stat(metaDir)
	return err
}

// close releases the data root's lock and closes it.
func (s *store) close() error { return errors.Join(s.lock.Close(), s.root.Close()) }

// available returns errUnavailable, with the reason, for a volume whose
// record is set aside, and nil for any other.
func (s *store) available(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reason, ok := s.unavailable[id]; ok {
		return fmt.Errorf("%w: %s", errUnavailable, reason)
	}
	return nil
}

// has reports whether the store has a record of volume id, in any state,
// or has set its record aside.
func (s *store) has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, known := s.volumes[id]
	_, unavailable := s.unavailable[id]
	return known || unavailable
}

// unavailableVolumes returns a copy of the unavailable volumes' reasons.
func (s *store) unavailableVolumes() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.unavailable)
}
