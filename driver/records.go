package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// Reading and writing the records in meta/; see store.go for the layout
// and the crash-safety argument.

func recordName(id string) string { return path.Join(metaDir, id+recordExt) }

// Names of a volume's record file by the state it marks (see store.go): a
// record becomes meta/<id>.json only once its create has committed; before
// that, and once its delete has begun, it lies under one of these prefixes,
// which no volume ID can start with.
const (
	creatingPrefix = ".creating-"
	deletingPrefix = ".deleting-"
)

func creatingName(id string) string { return path.Join(metaDir, creatingPrefix+id) }
func deletingName(id string) string { return path.Join(metaDir, deletingPrefix+id) }

// load reads every record in meta/ and removes temporary files.
func (s *store) load(logger klog.Logger) error {
	entries, err := fs.ReadDir(s.root.FS(), metaDir)
	if err != nil {
		return fmt.Errorf("reading records: %w", err)
	}
	// Records of creates and deletes under way, read after the committed
	// records they must not replace.
	var marked []fs.DirEntry
	for _, e := range entries {
		name := e.Name()
		id, isRecord := strings.CutSuffix(name, recordExt)
		switch {
		case strings.HasPrefix(name, tmpPrefix):
			if err := s.root.Remove(path.Join(metaDir, name)); err != nil {
				return fmt.Errorf("removing temporary record: %w", err)
			}
			logger.V(2).Info("Removed a temporary record left by an interrupted write", "file", name)
		case isRecord && e.Type().IsRegular() && validateVolumeID(id, "record name") == nil:
			if err := s.loadRecord(logger, id, recordName(id), ""); err != nil {
				return err
			}
		case isSetAside(name):
			// Set aside at an earlier start and not restored: still
			// unavailable (unless a restored record is also there).
			id := name[:strings.Index(name, recordExt+corruptSuffix)]
			if _, err := s.root.Stat(recordName(id)); errors.Is(err, fs.ErrNotExist) && validateVolumeID(id, "record name") == nil {
				s.markSetAside(id, path.Join(metaDir, name), "")
			}
		case markedID(name) != "" && e.Type().IsRegular():
			marked = append(marked, e)
		default:
			logger.Info("Ignoring an unexpected file among the volume records", "file", path.Join(s.rootPath, metaDir, name))
		}
	}
	for _, e := range marked {
		if err := s.loadMarked(logger, e.Name()); err != nil {
			return err
		}
	}
	return nil
}

// markedID returns the volume ID of a record named with creatingPrefix or
// deletingPrefix, or "".
func markedID(name string) string {
	for _, prefix := range []string{creatingPrefix, deletingPrefix} {
		if id, ok := strings.CutPrefix(name, prefix); ok && validateVolumeID(id, "record name") == nil {
			return id
		}
	}
	return ""
}

// loadMarked loads the record of a create or delete under way, in state
// creating or deleting by its name, for recover to clean up. Next to a
// committed record of the same volume, which the store never leaves, it
// is stale and removed: the committed record is what a CO was told.
func (s *store) loadMarked(logger klog.Logger, name string) error {
	id := markedID(name)
	state := stateCreating
	if strings.HasPrefix(name, deletingPrefix) {
		state = stateDeleting
	}
	file := path.Join(metaDir, name)
	if _, unavailable := s.unavailable[id]; unavailable {
		logger.Info("Leaving the record of an operation on an unavailable volume alone", "volumeID", id, "file", name)
		return nil
	}
	if _, committed := s.volumes[id]; committed {
		if err := s.root.Remove(file); err != nil {
			return fmt.Errorf("removing a stale record: %w", err)
		}
		logger.Info("Removed a stale record of an operation next to the volume's record", "volumeID", id, "file", name)
		return nil
	}
	return s.loadRecord(logger, id, file, state)
}

// loadRecord reads the record of volume id from file into the store, in
// state when it is not "" (else the record's own), or sets it aside when it
// cannot be read.
func (s *store) loadRecord(logger klog.Logger, id, file, state string) error {
	v, err := s.readRecord(id, file)
	if err != nil {
		return s.setAside(logger, id, file, err)
	}
	if state != "" {
		v.State = state
	}
	s.volumes[id] = v
	s.allocated += v.CapacityBytes
	return nil
}

// corruptSuffix, with a time, follows the name of a record set aside.
const corruptSuffix = ".corrupt-"

func isSetAside(name string) bool { return strings.Contains(name, recordExt+corruptSuffix) }

// setAside renames a record file that cannot be read to
// <id>.json.corrupt-<time> and marks its volume unavailable: one bad record
// must not stop the agent from serving every other volume of the node, and
// the volume's directory and the bad record are both kept for a person to
// look at.
func (s *store) setAside(logger klog.Logger, id, file string, readErr error) error {
	aside := recordName(id) + corruptSuffix + time.Now().UTC().Format("20060102T150405Z")
	if err := s.root.Rename(file, aside); err != nil {
		return fmt.Errorf("setting aside the unreadable record of volume %s: %w (and: %w)", id, err, readErr)
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	s.markSetAside(id, aside, " ("+readErr.Error()+")")
	logger.Error(readErr, "Set aside a corrupt volume record; that volume is unavailable, the others are served",
		"volumeID", id, "setAside", path.Join(s.rootPath, aside))
	return nil
}

// markSetAside marks volume id unavailable because its record lies set
// aside at aside (relative to the data root); cause, when known, says why,
// in parentheses.
func (s *store) markSetAside(id, aside, cause string) {
	s.unavailable[id] = fmt.Sprintf("its record was corrupt%s and is set aside as %s; put a good record back at %s and restart",
		cause, path.Join(s.rootPath, aside), path.Join(s.rootPath, recordName(id)))
}

// readRecord reads and checks the record of volume id in file name.
func (s *store) readRecord(id, name string) (*Volume, error) {
	data, err := s.root.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("reading record: %w", err)
	}
	v := &Volume{}
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("record %s is corrupt (move it away to start without it): %w",
			path.Join(s.rootPath, name), err)
	}
	if v.ID != id || !slices.Contains([]string{stateCreating, stateReady, stateDeleting}, v.State) || v.CapacityBytes < 0 {
		return nil, fmt.Errorf("record %s is not valid (id %q, state %q, capacity %d)",
			path.Join(s.rootPath, name), v.ID, v.State, v.CapacityBytes)
	}
	if v.Backend == "" {
		v.Backend = BackendDirectory
	}
	v.Pool = s.pool
	return v, nil
}

// recover cleans up every volume whose record is not ready.
func (s *store) recover(logger klog.Logger) error {
	for id, v := range s.volumes {
		if v.State == stateReady {
			continue
		}
		if err := s.remove(id); err != nil {
			return fmt.Errorf("cleaning up volume %s left %s: %w", id, v.State, err)
		}
		logger.Info("Cleaned up a volume left by an interrupted operation", "volumeID", id, "state", v.State)
	}
	return nil
}

// checkDirs reports ready volumes without their data and directories
// without a record (other than those of unavailable volumes, which are
// reported as such). Neither is changed.
func (s *store) checkDirs(logger klog.Logger) {
	for id, v := range s.volumes {
		if _, err := os.Stat(s.publishPath(*v)); err != nil {
			logger.Error(err, "Volume directory is missing; publishing this volume will fail", "volumeID", id)
		}
	}
	entries, err := fs.ReadDir(s.root.FS(), volumesDir)
	if err != nil {
		logger.Error(err, "Cannot list volume directories")
		return
	}
	for _, e := range entries {
		_, known := s.volumes[e.Name()]
		_, unavailable := s.unavailable[e.Name()]
		if !known && !unavailable {
			logger.Info("Directory without a volume record; left alone, remove it if it is not needed",
				"path", path.Join(s.rootPath, volumesDir, e.Name()))
		}
	}
}

// writeRecord writes a record atomically: temporary file, fsync, rename,
// fsync of meta/.
func (s *store) writeRecord(v *Volume) error {
	if err := s.writeFile(recordName(v.ID), v); err != nil {
		return err
	}
	return s.syncMeta()
}

// writeFile writes v to name in meta/ as a whole: temporary file, fsync,
// rename. The new name is durable once meta/ is synced.
func (s *store) writeFile(name string, v *Volume) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding record: %w", err)
	}
	tmp := path.Join(metaDir, tmpPrefix+v.ID)
	if err := s.writeSynced(tmp, append(data, '\n')); err != nil {
		_ = s.root.Remove(tmp)
		return fmt.Errorf("writing record: %w", err)
	}
	if err := s.root.Rename(tmp, name); err != nil {
		_ = s.root.Remove(tmp)
		return fmt.Errorf("renaming record: %w", err)
	}
	return nil
}

// moveRecord renames a record file in meta/ and makes the rename durable.
func (s *store) moveRecord(from, to string) error {
	if err := s.root.Rename(from, to); err != nil {
		return fmt.Errorf("renaming record: %w", err)
	}
	return s.syncMeta()
}

// dropRecord removes every file that may hold the record of volume id: the
// committed record and those of a create or delete under way. Only the
// removal of a committed record is made durable here (the old layout of
// records kept every state there); the others may come back after a power
// loss, which is safe: they only ever name work that recover finishes.
func (s *store) dropRecord(id string) error {
	for _, name := range []string{creatingName(id), deletingName(id), recordName(id)} {
		err := s.root.Remove(name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("removing volume record: %w", err)
		case name == recordName(id):
			return s.syncMeta()
		}
	}
	return nil
}

func (s *store) writeSynced(name string, data []byte) error {
	f, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// syncDir fsyncs a directory of the data root so the entries created,
// renamed or removed in it survive a power loss.
func (s *store) syncDir(name string) error { return syncDir(s.root, name) }

// syncMeta makes every change to the entries of meta/ made so far durable,
// sharing the fsync with concurrent callers (dirSync).
func (s *store) syncMeta() error { return s.metaSync.sync() }

func syncDir(root *os.Root, name string) error {
	d, err := root.Open(name)
	if err != nil {
		return fmt.Errorf("opening %s for fsync: %w", name, err)
	}
	defer func() { _ = d.Close() }()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", name, err)
	}
	return nil
}
