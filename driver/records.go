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

// load reads every record in meta/ and removes temporary files.
func (s *store) load(logger klog.Logger) error {
	entries, err := fs.ReadDir(s.root.FS(), metaDir)
	if err != nil {
		return fmt.Errorf("reading records: %w", err)
	}
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
			v, err := s.readRecord(id)
			if err != nil {
				if err := s.setAside(logger, id, err); err != nil {
					return err
				}
				continue
			}
			s.volumes[id] = v
			s.allocated += v.CapacityBytes
		case isSetAside(name):
			// Set aside at an earlier start and not restored: still
			// unavailable (unless a restored record is also there).
			id := name[:strings.Index(name, recordExt+corruptSuffix)]
			if _, err := s.root.Stat(recordName(id)); errors.Is(err, fs.ErrNotExist) && validateVolumeID(id, "record name") == nil {
				s.markSetAside(id, path.Join(metaDir, name), "")
			}
		default:
			logger.Info("Ignoring an unexpected file among the volume records", "file", path.Join(s.rootPath, metaDir, name))
		}
	}
	return nil
}

// corruptSuffix, with a time, follows the name of a record set aside.
const corruptSuffix = ".corrupt-"

func isSetAside(name string) bool { return strings.Contains(name, recordExt+corruptSuffix) }

// setAside renames a record that cannot be read to <id>.json.corrupt-<time>
// and marks its volume unavailable: one bad record must not stop the agent
// from serving every other volume of the node, and the volume's directory
// and the bad record are both kept for a person to look at.
func (s *store) setAside(logger klog.Logger, id string, readErr error) error {
	aside := recordName(id) + corruptSuffix + time.Now().UTC().Format("20060102T150405Z")
	if err := s.root.Rename(recordName(id), aside); err != nil {
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

func (s *store) readRecord(id string) (*Volume, error) {
	name := recordName(id)
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
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding record: %w", err)
	}
	tmp := path.Join(metaDir, tmpPrefix+v.ID)
	if err := s.writeSynced(tmp, append(data, '\n')); err != nil {
		_ = s.root.Remove(tmp)
		return fmt.Errorf("writing record: %w", err)
	}
	if err := s.root.Rename(tmp, recordName(v.ID)); err != nil {
		_ = s.root.Remove(tmp)
		return fmt.Errorf("renaming record: %w", err)
	}
	return s.syncMeta()
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
