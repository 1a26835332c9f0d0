package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"unsafe"

	"golang.org/x/sys/unix"
)

// btrfsBackend keeps each volume as a btrfs subvolume at volumes/<id>
// whose qgroup (0/<subvolume ID>) limits what it references to the
// volume's size: a write past the size fails with EDQUOT ("disk quota
// exceeded"), and the volume's use is the qgroup's count, read from the
// quota tree in one lookup rather than by walking the files. All of it goes
// through ioctls (btrfsioctl.go), so no btrfs binary is needed.
//
// What it does not cover:
//   - Counts are those of the last committed transaction, so usage lags
//     writes by up to the commit interval (30 s by default).
//   - A pod that makes a subvolume inside its volume (any user may) writes
//     there outside the volume's qgroup. Delete removes such subvolumes
//     with the volume.
//   - The kernel drops a deleted subvolume's qgroup once its cleaner has
//     freed the subvolume (Linux 6.18 does; older kernels may leave a
//     stale qgroup, which limits nothing). Dropping a large subvolume can
//     mark the qgroup counts inconsistent (see drop_subtree_threshold in
//     sysfs) until a quota rescan.
type btrfsBackend struct {
	root     *os.Root
	rootPath string
}

// newBtrfsBackend turns quotas on for the data root's file system
// (BTRFS_IOC_QUOTA_CTL, which is a no-op when they are on already and needs
// CAP_SYS_ADMIN) and checks that the quota tree can be read.
func newBtrfsBackend(root *os.Root, rootPath string) (*btrfsBackend, error) {
	f, err := root.Open(".")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	args := btrfsQuotaCtlArgs{Cmd: btrfsQuotaCtlEnable}
	if err := btrfsIoctl(f, ioctlQuotaCtl, unsafe.Pointer(&args)); err != nil {
		return nil, fmt.Errorf("turning on btrfs quotas for data root %s (BTRFS_IOC_QUOTA_CTL): %w", rootPath, err)
	}
	if _, err := qgroupUsage(f, btrfsTopSubvolume); err != nil && !errors.Is(err, errNoQgroup) {
		return nil, fmt.Errorf("reading the btrfs quota tree of data root %s: %w", rootPath, err)
	}
	return &btrfsBackend{root: root, rootPath: rootPath}, nil
}

// btrfsTopSubvolume is the ID of a btrfs file system's top-level subvolume
// (BTRFS_FS_TREE_OBJECTID), whose qgroup 0/5 exists while quotas are on.
const btrfsTopSubvolume = 5

// errNoQgroup is returned when a subvolume has no qgroup info item.
var errNoQgroup = errors.New("no qgroup for the subvolume (are btrfs quotas off?)")

func (*btrfsBackend) Name() string { return BackendBtrfs }

func (b *btrfsBackend) Path(id string) string { return path.Join(b.rootPath, volumesDir, id) }

// Create makes the subvolume, limits its qgroup, sets its mode and commits
// the transaction, so a crash after Create leaves the whole volume or, if
// the store's record still says "creating", a subvolume that start-up
// deletes.
func (b *btrfsBackend) Create(v newVolume) error {
	if err := b.entryCall(volumesDir, ioctlSubvolCreate, v.ID); err != nil {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			err = fmt.Errorf("%w: %w", errNoSpace, err)
		}
		return fmt.Errorf("creating btrfs subvolume %s (BTRFS_IOC_SUBVOL_CREATE): %w", b.Path(v.ID), err)
	}
	return b.withSubvolume(v.ID, func(f *os.File, qgroup uint64) error {
		if err := setQgroupLimit(f, qgroup, v.Size); err != nil {
			return err
		}
		if err := f.Chmod(v.Mode); err != nil {
			return fmt.Errorf("setting volume directory mode: %w", err)
		}
		return btrfsCommit(f)
	})
}

// Expand raises the limit of the subvolume's qgroup and commits.
func (b *btrfsBackend) Expand(id string, size int64) error {
	return b.withSubvolume(id, func(f *os.File, qgroup uint64) error {
		if err := setQgroupLimit(f, qgroup, size); err != nil {
			return err
		}
		return btrfsCommit(f)
	})
}

// Delete deletes the subvolume, files and all, and commits. btrfs refuses
// to delete a subvolume that holds others (ENOTEMPTY), so subvolumes made
// inside the volume go first, deepest first. A missing subvolume is fine;
// a plain directory in its place is left alone.
func (b *btrfsBackend) Delete(id string) error {
	err := b.withSubvolume(id, deleteNested)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case errors.Is(err, errNotSubvolume):
		return fmt.Errorf("not deleting it: %w", err)
	case err != nil:
		return err
	}
	return b.destroy(volumesDir, id)
}

// destroy deletes the subvolume name of the directory dir (one with no
// subvolumes inside it), read-only or not, and commits. A missing one is
// fine.
func (b *btrfsBackend) destroy(dir, name string) error {
	if err := b.entryCall(dir, ioctlSnapDestroy, name); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("deleting btrfs subvolume %s (BTRFS_IOC_SNAP_DESTROY): %w", path.Join(b.rootPath, dir, name), err)
	}
	return b.commitIn(dir)
}

// commitIn commits the transaction of the file system holding dir.
func (b *btrfsBackend) commitIn(dir string) error {
	f, err := b.root.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return btrfsCommit(f)
}

// Usage reports the referenced bytes of the subvolume's qgroup and the
// file system's free space. btrfs has no inode count to report.
func (b *btrfsBackend) Usage(id string) (volumeUsage, error) {
	var u volumeUsage
	err := b.withSubvolume(id, func(f *os.File, qgroup uint64) error {
		used, err := qgroupUsage(f, qgroup)
		if err != nil {
			return err
		}
		var st unix.Statfs_t
		if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
			return fmt.Errorf("statfs %s: %w", b.Path(id), err)
		}
		u = volumeUsage{UsedBytes: used, FreeBytes: int64(st.Bavail) * st.Bsize}
		return nil
	})
	return u, err
}

// entryCall calls a BTRFS_IOC_SUBVOL_CREATE-like request, whose argument
// names an entry, with name on the directory dir of the data root.
func (b *btrfsBackend) entryCall(dir string, req uintptr, name string) error {
	f, err := b.root.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	var args btrfsVolArgs
	if len(name) >= len(args.Name) {
		return fmt.Errorf("name %q is too long for a subvolume", name)
	}
	copy(args.Name[:], name)
	return btrfsIoctl(f, req, unsafe.Pointer(&args))
}

// withSubvolume opens volume id's subvolume and calls fn with it and the
// ID of its qgroup, which is the subvolume's ID (BTRFS_IOC_INO_LOOKUP).
func (b *btrfsBackend) withSubvolume(id string, fn func(f *os.File, qgroup uint64) error) error {
	return b.withSubvolumeAt(volumeName(id), fn)
}

// withSubvolumeAt is withSubvolume for the subvolume at name, a path
// relative to the data root.
func (b *btrfsBackend) withSubvolumeAt(name string, fn func(f *os.File, qgroup uint64) error) error {
	f, err := b.root.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	p := path.Join(b.rootPath, name)
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("stat %s: %w", p, err)
	}
	if !isSubvolumeTop(&st) {
		return fmt.Errorf("%s: %w", p, errNotSubvolume)
	}
	args := btrfsInoLookupArgs{ObjectID: btrfsFirstFreeObjectID}
	if err := btrfsIoctl(f, ioctlInoLookup, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("finding the subvolume ID of %s (BTRFS_IOC_INO_LOOKUP): %w", p, err)
	}
	return fn(f, args.TreeID)
}

// isSubvolumeTop reports whether st, of a file on btrfs, is the top
// directory of a subvolume (inode 256).
func isSubvolumeTop(st *unix.Stat_t) bool {
	return st.Ino == btrfsFirstFreeObjectID && st.Mode&unix.S_IFMT == unix.S_IFDIR
}

// errNotSubvolume marks a volume of the btrfs backend whose path is not
// the top of a subvolume (a btrfs subvolume's top directory is inode 256).
var errNotSubvolume = errors.New("not a btrfs subvolume")

// deleteNested deletes the subvolumes inside subvolume parent, at any
// depth, children before their parents (BTRFS_IOC_SNAP_DESTROY_V2 by ID).
// f is any file on the file system.
func deleteNested(f *os.File, parent uint64) error {
	children, err := childSubvolumes(f, parent)
	if err != nil {
		return err
	}
	for _, c := range children {
		if err := deleteNested(f, c); err != nil {
			return err
		}
		args := btrfsVolArgsV2{Flags: btrfsSubvolSpecByID, SubvolID: c}
		if err := btrfsIoctl(f, ioctlSnapDestroyV2, unsafe.Pointer(&args)); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("deleting btrfs subvolume %d, made inside subvolume %d (BTRFS_IOC_SNAP_DESTROY_V2): %w", c, parent, err)
		}
	}
	return nil
}

// childSubvolumes lists the IDs of the subvolumes directly inside
// subvolume parent: the offsets of its ROOT_REF items in the root tree.
func childSubvolumes(f *os.File, parent uint64) ([]uint64, error) {
	var children []uint64
	next := uint64(0)
	for {
		args := btrfsSearchArgs{Key: btrfsSearchKey{
			TreeID:      btrfsRootTreeObjectID,
			MinObjectID: parent,
			MaxObjectID: parent,
			MinType:     btrfsRootRefKey,
			MaxType:     btrfsRootRefKey,
			MinOffset:   next,
			MaxOffset:   math.MaxUint64,
			MaxTransID:  math.MaxUint64,
			NrItems:     math.MaxUint32,
		}}
		if err := btrfsIoctl(f, ioctlTreeSearch, unsafe.Pointer(&args)); err != nil {
			return nil, fmt.Errorf("listing the subvolumes inside subvolume %d (BTRFS_IOC_TREE_SEARCH): %w", parent, err)
		}
		if args.Key.NrItems == 0 {
			return children, nil
		}
		read := 0
		searchResults(args.Buf[:], args.Key.NrItems, func(k btrfsKey, _ []byte) bool {
			if k.ObjectID == parent && k.Type == btrfsRootRefKey {
				children = append(children, k.Offset)
			}
			next = k.Offset + 1
			read++
			return true
		})
		switch {
		case read == 0:
			return nil, fmt.Errorf("listing the subvolumes inside subvolume %d: a tree search result that cannot be read", parent)
		case next == 0: // the last result had offset MaxUint64
			return children, nil
		}
	}
}

// setQgroupLimit limits what qgroup 0/<qgroup> may reference to size bytes.
func setQgroupLimit(f *os.File, qgroup uint64, size int64) error {
	args := btrfsQgroupLimitArgs{QgroupID: qgroup, Flags: btrfsQgroupLimitMaxRfer, MaxRfer: uint64(size)}
	if err := btrfsIoctl(f, ioctlQgroupLimit, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("limiting btrfs qgroup 0/%d to %d bytes (BTRFS_IOC_QGROUP_LIMIT): %w", qgroup, size, err)
	}
	return nil
}

// qgroupUsage reads the referenced bytes of qgroup 0/<qgroup> from its
// info item in the quota tree (BTRFS_IOC_TREE_SEARCH for exactly that key).
func qgroupUsage(f *os.File, qgroup uint64) (int64, error) {
	args := btrfsSearchArgs{Key: btrfsSearchKey{
		TreeID:     btrfsQuotaTreeObjectID,
		MinType:    btrfsQgroupInfoKey,
		MaxType:    btrfsQgroupInfoKey,
		MinOffset:  qgroup,
		MaxOffset:  qgroup,
		MaxTransID: math.MaxUint64,
		NrItems:    1,
	}}
	if err := btrfsIoctl(f, ioctlTreeSearch, unsafe.Pointer(&args)); err != nil {
		return 0, fmt.Errorf("reading btrfs qgroup 0/%d (BTRFS_IOC_TREE_SEARCH): %w", qgroup, err)
	}
	rfer, ok := qgroupRfer(args.Buf[:], args.Key.NrItems, qgroup)
	if !ok {
		return 0, fmt.Errorf("qgroup 0/%d: %w", qgroup, errNoQgroup)
	}
	return rfer, nil
}

// btrfsCommit commits the running transaction and waits for it, which
// makes what was just changed (a subvolume made or deleted, a qgroup
// limit) durable. Unlike syncfs it does not write back the dirty data of
// every file on the file system first: BTRFS_IOC_START_SYNC starts the
// commit and returns its ID, BTRFS_IOC_WAIT_SYNC waits for it.
func btrfsCommit(f *os.File) error {
	var transID uint64
	if err := btrfsIoctl(f, ioctlStartSync, unsafe.Pointer(&transID)); err != nil {
		return fmt.Errorf("committing the btrfs transaction (BTRFS_IOC_START_SYNC): %w", err)
	}
	if err := btrfsIoctl(f, ioctlWaitSync, unsafe.Pointer(&transID)); err != nil {
		return fmt.Errorf("waiting for btrfs transaction %d (BTRFS_IOC_WAIT_SYNC): %w", transID, err)
	}
	return nil
}
