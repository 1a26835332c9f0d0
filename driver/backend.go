package driver

import (
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Backend names: what Config.Backend accepts and what a volume's record
// says holds its data.
const (
	// BackendAuto picks btrfs when the data root is on btrfs, else
	// directory. It is what an empty Config.Backend means.
	BackendAuto = "auto"
	// BackendDirectory keeps a volume as a plain directory; its size is
	// bookkeeping only.
	BackendDirectory = "directory"
	// BackendBtrfs keeps a volume as a btrfs subvolume whose qgroup limit
	// is its size (btrfs.go).
	BackendBtrfs = "btrfs"
)

// backend keeps the data of volumes. The store decides when to call it (the
// record states, crash safety, capacity accounting; see store.go); the
// backend only acts on the disk, and what it reports done is durable.
//
// Each volume's record names its backend, so one data root can hold volumes
// of several backends and a new default does not orphan older volumes.
//
// Clones are the optional cloner interface (clone.go), snapshots the
// snapshotter interface (snapshotbackend.go); a handler that finds the
// volume's backend without it answers with an error that names the
// backend, never with a copy made some other way.
type backend interface {
	// Name is what records store for the volumes of this backend.
	Name() string
	// Create makes the volume's data with the limit v.Size where the
	// backend enforces one. Errors wrap errNoSpace when the file system
	// has no room.
	Create(v newVolume) error
	// Expand raises the limit of an existing volume to size bytes.
	Expand(id string, size int64) error
	// Delete removes the volume's data. A volume that is not there is
	// not an error, so a rollback or a retry may call it freely.
	Delete(id string) error
	// Usage reports what the volume holds and what its file system has
	// left.
	Usage(id string) (volumeUsage, error)
	// Path is the directory that NodePublishVolume bind-mounts.
	Path(id string) string
}

// activator is a backend whose volumes need setting up again when the
// agent starts before they can be published (image volumes: mounted).
type activator interface {
	Activate(id, fsType string) error
}

// nodeExpander is a backend whose volumes grow in two steps, as CSI has
// them: Expand in ControllerExpandVolume, then NodeExpand (the file system)
// in NodeExpandVolume.
type nodeExpander interface {
	NodeExpand(id, fsType string) error
	// ExpandUnpublished is NodeExpand for a volume no pod has mounted,
	// which may do more (grow offline).
	ExpandUnpublished(id, fsType string) error
}

// dataLocator is a backend whose volumes' data is not where they are
// mounted from (image volumes: the image file).
type dataLocator interface {
	DataPath(id string) string
}

// newVolume is what backend.Create makes.
type newVolume struct {
	ID   string
	Size int64
	// FsType is the file system to make, for backends that make one.
	FsType string
	// Mode is the permission of the volume's top directory.
	Mode fs.FileMode
}

// volumeUsage is what a volume holds and what its file system has left.
type volumeUsage struct {
	UsedBytes int64
	FreeBytes int64 // statfs f_bavail of the file system
	// Inodes says whether UsedInodes and FreeInodes are known: btrfs
	// allocates inodes as it goes and has no count of them to report.
	Inodes     bool
	UsedInodes int64
	FreeInodes int64 // statfs f_ffree of the file system
}

// directoryBackend keeps a volume as a plain directory at volumes/<id>.
// Nothing on disk holds its size: the size only counts against the node's
// capacity (Config.Capacity), and a pod can write past it.
type directoryBackend struct {
	root     *os.Root
	rootPath string
}

func (directoryBackend) Name() string { return BackendDirectory }

func (b directoryBackend) Path(id string) string { return path.Join(b.rootPath, volumesDir, id) }

func (b directoryBackend) Create(v newVolume) error {
	name := volumeName(v.ID)
	if err := b.root.Mkdir(name, 0o700); err != nil {
		return fmt.Errorf("creating volume directory: %w", err)
	}
	// Mkdir's mode is filtered by the umask; set the mode asked for.
	if err := b.root.Chmod(name, v.Mode); err != nil {
		return fmt.Errorf("setting volume directory mode: %w", err)
	}
	return syncDir(b.root, volumesDir)
}

// Expand has nothing to change on disk: the size is the record's.
func (directoryBackend) Expand(string, int64) error { return nil }

func (b directoryBackend) Delete(id string) error {
	if err := b.root.RemoveAll(volumeName(id)); err != nil {
		return fmt.Errorf("removing volume directory: %w", err)
	}
	return syncDir(b.root, volumesDir)
}

// Usage walks the directory (see measureDir for the cost).
func (b directoryBackend) Usage(id string) (volumeUsage, error) { return measureDir(b.Path(id)) }

// openBackends sets up the backends of the store's data root: the one
// that makes new volumes (choice: a backend name, or "" or BackendAuto) and
// those the loaded records name. A record whose backend cannot be served
// here makes its volume unavailable, with the reason; the others are
// served. extra backends (tests) are offered besides the built-in ones.
//
// The btrfs backend is only set up where it is used, because setting it up
// turns quotas on for the whole file system, which costs every writer on it
// some bookkeeping. When it is the choice and cannot be set up, that is an
// error: falling back to directories would drop the size limits silently.
func (s *store) openBackends(logger klog.Logger, choice string, extra []backend) error {
	var st unix.Statfs_t
	if err := unix.Statfs(s.rootPath, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", s.rootPath, err)
	}
	onBtrfs := st.Type == unix.BTRFS_SUPER_MAGIC
	s.backends = map[string]backend{
		BackendDirectory: directoryBackend{root: s.root, rootPath: s.rootPath},
		// Chosen per class (volumeType), never by --backend; it needs
		// nothing set up until it makes a volume.
		BackendImage: imageBackend{root: s.root, rootPath: s.rootPath},
		// Chosen by the block access type, for the same reason.
		BackendBlock: blockBackend{root: s.root, rootPath: s.rootPath},
	}
	for _, b := range extra {
		s.backends[b.Name()] = b
	}
	switch choice {
	case "", BackendAuto:
		choice = BackendDirectory
		if onBtrfs {
			choice = BackendBtrfs
		}
	case BackendBtrfs:
		if !onBtrfs {
			return fmt.Errorf("backend %s needs a data root on btrfs, and %s is on another file system (statfs type %#x)",
				BackendBtrfs, s.rootPath, st.Type)
		}
	}
	// Why a backend the records name is not served, by name.
	missing := map[string]string{}
	if choice == BackendBtrfs || s.uses(BackendBtrfs) {
		b, err := newBtrfsBackend(s.root, s.rootPath)
		switch {
		case err == nil:
			s.backends[BackendBtrfs] = b
		case choice == BackendBtrfs:
			return fmt.Errorf("%w; to make volumes without an enforced size on this data root, choose backend %s",
				err, BackendDirectory)
		case !onBtrfs:
			missing[BackendBtrfs] = "the data root is not on btrfs any more"
		default:
			missing[BackendBtrfs] = err.Error()
		}
	}
	def, ok := s.backends[choice]
	if !ok {
		return unknownBackend(choice)
	}
	s.defaultBackend = def
	s.dropUnserved(missing)
	logger.V(2).Info("Volume backends ready", "backend", def.Name(), "serving", slices.Sorted(maps.Keys(s.backends)))
	return nil
}

// uses reports whether a loaded record of a volume or snapshot names
// backend name.
func (s *store) uses(name string) bool {
	for _, v := range s.volumes {
		if v.Backend == name {
			return true
		}
	}
	for _, sn := range s.snapshots {
		if sn.Backend == name {
			return true
		}
	}
	return false
}

// activate sets up again, at start, the ready volumes of backends that
// need it (image volumes: mounted). A volume that cannot be set up is made
// unavailable with the reason, as dropUnserved does; the others are served.
func (s *store) activate(logger klog.Logger) {
	for id, v := range s.volumes {
		a, ok := s.backends[v.Backend].(activator)
		if !ok || v.State != stateReady {
			continue
		}
		if err := a.Activate(id, v.FsType); err != nil {
			logger.Error(err, "Cannot set up a volume; it is unavailable, the others are served", "volumeID", id, "backend", v.Backend)
			s.unavailable[id] = fmt.Sprintf("its %s backend cannot set it up: %v", v.Backend, err)
			delete(s.volumes, id)
		}
	}
}

// dropUnserved makes the volumes whose backend is not served unavailable.
// Their size stays allocated: their data is still on the node.
func (s *store) dropUnserved(missing map[string]string) {
	for id, v := range s.volumes {
		if _, ok := s.backends[v.Backend]; ok {
			continue
		}
		why := missing[v.Backend]
		if why == "" {
			why = "this driver has no such backend (was it made by a newer version?)"
		}
		s.unavailable[id] = fmt.Sprintf("its record says backend %q, which cannot serve it here: %s", v.Backend, why)
		delete(s.volumes, id)
	}
}

// backend returns the backend of a loaded volume.
func (s *store) backend(v Volume) backend { return s.backends[v.Backend] }

// checkBackend checks a Config.Backend value: "", BackendAuto, a
// built-in backend or one of extra (tests).
func checkBackend(name string, extra []backend) error {
	if slices.Contains([]string{"", BackendAuto, BackendDirectory, BackendBtrfs}, name) ||
		slices.ContainsFunc(extra, func(b backend) bool { return b.Name() == name }) {
		return nil
	}
	return unknownBackend(name)
}

func unknownBackend(name string) error {
	return fmt.Errorf("unknown backend %q: the choices are %s, %s and %s", name, BackendAuto, BackendDirectory, BackendBtrfs)
}
