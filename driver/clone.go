package driver

import (
	"errors"
	"fmt"
	"os"
	"path"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Clones: CreateVolume with a volume content source makes the new volume
// a copy of a ready volume of this node.
//
// "Same backend" means the clone is made by the source's backend, in the
// source's pool: the copy is cheap only there (a btrfs snapshot and a
// reflink both need the same file system), and a volume's kind is part of
// its data (an image holds a file system of one type, a block volume raw
// sectors). So the request must agree with the source on what it can say:
// block or mount access type; for an image source, volumeType image and
// the same fsType; for a directory or btrfs source, no volumeType; and the
// pool. A request that contradicts the source is InvalidArgument, with a
// message that names both. A directory source is cloned as a directory even
// when new volumes of its pool are btrfs subvolumes, and the other way
// round.
//
// The size is the larger of the source's and required_bytes; a limit_bytes
// below the source's size is OutOfRange (the clone cannot be smaller than
// its data). A larger image clone gets its file system grown to the new
// size before CreateVolume answers.
//
// The source's lock is held for the copy, so the source is not deleted,
// expanded or published meanwhile (those calls answer Aborted and are
// retried). The clone takes the same path through the store as a new
// volume (intent record, backend, commit), so a crash during the copy
// leaves a creating record that start-up rolls back.
//
// A volume restored from a snapshot (snapshot.go) follows the same rules,
// with the snapshot in the source's place: it has the access type,
// backend, file system and pool its snapshot's volume had, and at least
// its size (checkCopySource); the snapshot's lock is held for the copy.

// cloner is a backend that can make a volume as a copy of another of its
// volumes. v is the new volume; its FsType is the source's.
type cloner interface {
	Clone(src string, v newVolume) error
}

// copySource is what checkCopySource needs to know of the content source
// of a new volume: a volume to clone or a snapshot to restore.
type copySource struct {
	// name says what the source is in messages: "source volume <id>" or
	// "snapshot <id>".
	name      string
	backend   string
	pool      string
	fsType    string
	size      int64
	ephemeral bool
	// can reports whether a backend can make the copy.
	can func(backend) bool
	// verb is what can checks, for its message: "make clones".
	verb string
}

func volumeCopySource(v Volume) copySource {
	return copySource{
		name: "source volume " + v.ID, backend: v.Backend, pool: v.Pool, fsType: v.FsType,
		size: v.CapacityBytes, ephemeral: v.Ephemeral, verb: "make clones",
		can: func(b backend) bool { _, ok := b.(cloner); return ok },
	}
}

func snapshotCopySource(sn Snapshot) copySource {
	return copySource{
		name: "snapshot " + sn.ID, backend: sn.Backend, pool: sn.Pool, fsType: sn.FsType,
		size: sn.SizeBytes, verb: "restore snapshots",
		can: func(b backend) bool { _, ok := b.(snapshotter); return ok },
	}
}

// checkCopySource checks that src can be copied into a volume with the
// spec's parameters, in pool st: a clone or a restored volume is made by
// its source's backend, in its source's pool, with its source's access
// type and at least its size. It returns the new volume's size.
func checkCopySource(src copySource, st *store, spec volumeSpec) (int64, error) {
	p := spec.Params
	block := src.backend == BackendBlock
	switch {
	case src.ephemeral:
		return 0, status.Errorf(codes.InvalidArgument, "%s is an inline ephemeral volume, which cannot be cloned", src.name)
	case block != p.Block:
		return 0, status.Errorf(codes.InvalidArgument, "%s is %s and the request asks for %s; a volume made from it has its access type",
			src.name, blockNote(block), blockNote(p.Block))
	case src.pool != st.pool:
		return 0, status.Errorf(codes.InvalidArgument, "%s is in pool %s and the request asks for %s=%s; a volume made from it is in its pool",
			src.name, src.pool, ParamPool, st.pool)
	case !p.Block && (src.backend == BackendImage) != p.Image,
		src.backend == BackendImage && p.FsType != src.fsType:
		return 0, status.Errorf(codes.InvalidArgument, "%s is of a %s volume%s and the request asks for %s; "+
			"a volume made from it is made by its backend, so use the source's StorageClass (or one with the same %s and %s)",
			src.name, src.backend, fsTypeNote(src.fsType), requestedType(p), ParamVolumeType, ParamFsType)
	case p.SizeRequired && src.backend == BackendDirectory:
		return 0, status.Errorf(codes.InvalidArgument, "%s is of a directory volume, whose size is not enforced, and the request asks %s=%s",
			src.name, ParamSizeEnforcement, SizeEnforcementRequired)
	}
	r := spec.Range
	if limit := r.GetLimitBytes(); limit > 0 && limit < src.size {
		return 0, status.Errorf(codes.OutOfRange, "%s has %d bytes, more than limit_bytes=%d: a volume made from it is at least as large",
			src.name, src.size, limit)
	}
	if b, ok := st.backends[src.backend]; !ok || !src.can(b) {
		return 0, status.Errorf(codes.InvalidArgument, "the %s backend of %s cannot %s", src.backend, src.name, src.verb)
	}
	if r.GetRequiredBytes() > src.size {
		return spec.Size, nil // rounded for block and image volumes by createSpec
	}
	return src.size, nil
}

// Clone makes the new subvolume a writable snapshot of the source's
// (O(1): the two share every extent until either writes), then limits its
// qgroup to the new size and commits. Subvolumes a pod made inside the
// source are not part of a snapshot: they show as empty directories.
func (b *btrfsBackend) Clone(src string, v newVolume) error {
	if err := b.snapshotInto(volumeName(src), volumesDir, v.ID, 0); err != nil {
		return err
	}
	return b.Expand(v.ID, v.Size)
}

// snapshotInto makes a snapshot of the subvolume at name (a path relative
// to the data root) as the new subvolume dst in the directory dir:
// read-only when flags has btrfsSubvolRdonly, else writable. It does not
// commit.
func (b *btrfsBackend) snapshotInto(name, dir, dst string, flags uint64) error {
	return b.withSubvolumeAt(name, func(s *os.File, _ uint64) error {
		d, err := b.root.Open(dir)
		if err != nil {
			return err
		}
		defer d.Close()
		args := btrfsSnapArgs{Fd: int64(s.Fd()), Flags: flags}
		if len(dst) >= len(args.Name) {
			return fmt.Errorf("name %q is too long for a subvolume", dst)
		}
		copy(args.Name[:], dst)
		if err := btrfsIoctl(d, ioctlSnapCreateV2, unsafe.Pointer(&args)); err != nil {
			if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
				err = fmt.Errorf("%w: %w", errNoSpace, err)
			}
			return fmt.Errorf("snapshotting btrfs subvolume %s as %s (BTRFS_IOC_SNAP_CREATE_V2): %w",
				path.Join(b.rootPath, name), path.Join(b.rootPath, dir, dst), err)
		}
		return nil
	})
}

// Clone copies the source directory's tree into the new volume's directory
// (copyDir).
func (b directoryBackend) Clone(src string, v newVolume) error {
	return b.copyDir(volumeName(src), volumesDir, v.ID)
}

// copyDir copies the tree at src (a path relative to the data root) into
// the new directory dst of the directory dir with copyTree (reflinked
// files where the data root's file system can, sparse copies elsewhere),
// then flushes the data root's file system and syncs dir, so the copy is
// durable before a record names it. The new top directory takes the
// source's owner, mode and times, as a copy does.
func (b directoryBackend) copyDir(src, dir, dst string) error {
	name := path.Join(dir, dst)
	if err := b.root.Mkdir(name, 0o700); err != nil {
		return fmt.Errorf("creating directory %s: %w", name, err)
	}
	to := path.Join(b.rootPath, name)
	if err := copyTree(path.Join(b.rootPath, src), to); err != nil {
		return fmt.Errorf("copying %s: %w", src, err)
	}
	if err := syncFS(to); err != nil {
		return err
	}
	return syncDir(b.root, dir)
}

// Clone copies the source's image with its file system frozen
// (frozenCopy), then mounts the copy and grows it to the new size
// (mountCopy).
//
// An xfs clone has its source's UUID, which xfs refuses to mount twice;
// image volumes of xfs are mounted with nouuid (imagefs.go).
func (b imageBackend) Clone(src string, v newVolume) error {
	if err := b.frozenCopy(src, v.FsType, path.Join(imagesDir, v.ID), v.Size); err != nil {
		return err
	}
	return b.mountCopy(v)
}

// frozenCopy copies the image of volume src, of file system fsType, to
// dst (a path relative to the data root; at least size bytes long) with
// its file system frozen (FIFREEZE), so the copy is that file system at
// one moment, clean as after a sync, even while pods write to it: writers
// wait for the copy, which a reflink makes short. The copy is synced, not
// its directory.
func (b imageBackend) frozenCopy(src, fsType, dst string, size int64) error {
	fsys, ok := imageFileSystems[fsType]
	if !ok {
		return fmt.Errorf("%w: file system %q for an image volume", errUnsupported, fsType)
	}
	// Checked to be the image's own file system: freezing the data
	// root's, which the copy writes to, would never end.
	dir, err := b.openMounted(src, fsys)
	if err != nil {
		return err
	}
	err = withFrozen(dir, func() error {
		return copyImage(b.root, path.Join(imagesDir, src), dst, size)
	})
	_ = dir.Close()
	if err != nil {
		return fmt.Errorf("copying the image of volume %s: %w", src, err)
	}
	return nil
}

// mountCopy finishes a new volume v whose image is a copy, in place at
// images/<id>: it mounts the image, grows its file system to the image's
// size and makes it all durable.
func (b imageBackend) mountCopy(v newVolume) error {
	if err := b.root.Mkdir(volumeName(v.ID), 0o700); err != nil {
		return fmt.Errorf("creating mount point: %w", err)
	}
	fresh, err := b.mount(v.ID, v.FsType)
	if err != nil {
		return err
	}
	if err := b.grow(v.ID, v.FsType, fresh); err != nil {
		return err
	}
	if err := syncFS(b.Path(v.ID)); err != nil {
		return err
	}
	if err := syncDir(b.root, imagesDir); err != nil {
		return err
	}
	return syncDir(b.root, volumesDir)
}

// Clone copies the source's file (flushedCopy).
func (b blockBackend) Clone(src string, v newVolume) error {
	if err := b.flushedCopy(src, path.Join(imagesDir, v.ID), v.Size); err != nil {
		return err
	}
	return syncDir(b.root, imagesDir)
}

// flushedCopy copies the file of volume src to dst (a path relative to the
// data root; at least size bytes long) and syncs the copy. While a pod has
// the source attached, its loop device is flushed first, so what the pod
// wrote before the copy started is in it; a pod writing during the copy
// may leave it torn, as a raw device cannot be frozen: stop the writer
// first for a consistent copy.
func (b blockBackend) flushedCopy(src, dst string, size int64) error {
	dev, err := b.Device(src)
	if err != nil {
		return err
	}
	if dev != "" {
		f, err := os.OpenFile(dev, os.O_RDONLY, 0)
		if err != nil {
			return fmt.Errorf("opening %s to flush it: %w", dev, err)
		}
		err = f.Sync()
		_ = f.Close()
		if err != nil {
			return fmt.Errorf("flushing %s: %w", dev, err)
		}
	}
	if err := copyImage(b.root, path.Join(imagesDir, src), dst, size); err != nil {
		return fmt.Errorf("copying the file of volume %s: %w", src, err)
	}
	return nil
}

// copyImage copies the file src to the new file dst (both paths relative
// to the data root; dst's directory is made if missing), at least size
// bytes long, and syncs the copy.
func copyImage(root *os.Root, src, dst string, size int64) error {
	if err := root.MkdirAll(path.Dir(dst), 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", path.Dir(dst), err)
	}
	s, err := root.Open(src)
	if err != nil {
		return err
	}
	defer s.Close()
	d, err := root.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer d.Close()
	err = copyFile(int(s.Fd()), int(d.Fd()), size)
	if err == nil {
		err = d.Sync()
	}
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EFBIG) {
		return fmt.Errorf("%w: %w", errNoSpace, err)
	}
	return err
}

// FIFREEZE and FITHAW, _IOWR('X', 119, int) and _IOWR('X', 120, int) of
// <linux/fs.h>, which golang.org/x/sys/unix lacks.
const (
	ioctlFreeze = 0xc0045877
	ioctlThaw   = 0xc0045878
)

// withFrozen calls fn with the file system of the open directory dir
// frozen: its writers wait, and what they wrote before is on its device.
// It is thawed after fn, whatever fn returns. An agent that dies while it
// is frozen thaws it at start (imageBackend.Activate).
func withFrozen(dir *os.File, fn func() error) error {
	if err := unix.IoctlSetInt(int(dir.Fd()), ioctlFreeze, 0); err != nil {
		return fmt.Errorf("freezing the file system at %s (FIFREEZE): %w", dir.Name(), err)
	}
	ferr := fn()
	if err := unix.IoctlSetInt(int(dir.Fd()), ioctlThaw, 0); err != nil {
		return errors.Join(ferr, fmt.Errorf("thawing the file system at %s (FITHAW): %w", dir.Name(), err))
	}
	return ferr
}

// thaw thaws the file system of the open directory dir if it is frozen.
func thaw(dir *os.File) error {
	if err := unix.IoctlSetInt(int(dir.Fd()), ioctlThaw, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("thawing the file system at %s (FITHAW): %w", dir.Name(), err)
	}
	return nil
}
