package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"

	"golang.org/x/sys/unix"
)

// snapshotter is a backend that can take snapshots of its volumes and
// make new volumes from them (snapshot.go). What it does is what its
// Clone does (clone.go), with the snapshot in between: a snapshot is a
// clone into snapshots/<id>, a restore a clone out of it.
type snapshotter interface {
	// Snapshot makes the data of snapshot sn (of volume sn.Source) at
	// snapshots/<sn.ID>, durably.
	Snapshot(sn Snapshot) error
	// Restore makes the new volume v from snapshot sn's data, durably;
	// v.FsType is the snapshot's.
	Restore(sn Snapshot, v newVolume) error
	// DeleteSnapshot removes the data of snapshot id, durably. Data that
	// is not there is no error.
	DeleteSnapshot(id string) error
}

// Snapshot makes a read-only snapshot of the volume's subvolume at
// snapshots/<id> and commits: O(1), the two share every extent until the
// volume is written. The snapshot's qgroup has no limit; it reserves
// nothing of the pool's capacity (snapshot.go).
func (b *btrfsBackend) Snapshot(sn Snapshot) error {
	if err := b.snapshotInto(volumeName(sn.Source), snapshotsDir, sn.ID, btrfsSubvolRdonly); err != nil {
		return err
	}
	return b.commitIn(snapshotsDir)
}

// Restore makes the new volume a writable snapshot of the read-only one,
// limits its qgroup to the new size and commits, as Clone does.
func (b *btrfsBackend) Restore(sn Snapshot, v newVolume) error {
	if err := b.snapshotInto(snapshotName(sn.ID), volumesDir, v.ID, 0); err != nil {
		return err
	}
	return b.Expand(v.ID, v.Size)
}

// DeleteSnapshot deletes the read-only subvolume and commits. Its qgroup
// goes as a deleted volume's does, once btrfs has freed the subvolume.
func (b *btrfsBackend) DeleteSnapshot(id string) error {
	return b.destroy(snapshotsDir, id)
}

// Snapshot copies the volume's tree to snapshots/<id> (copyDir): reflinked
// where the file system can, file by file, so a tree in use is copied as
// it is found, not at one moment.
func (b directoryBackend) Snapshot(sn Snapshot) error {
	return b.copyDir(volumeName(sn.Source), snapshotsDir, sn.ID)
}

// Restore copies the snapshot's tree into the new volume's directory.
func (b directoryBackend) Restore(sn Snapshot, v newVolume) error {
	return b.copyDir(snapshotName(sn.ID), volumesDir, v.ID)
}

func (b directoryBackend) DeleteSnapshot(id string) error { return removeCopy(b.root, id) }

// Snapshot copies the volume's image with its file system frozen
// (frozenCopy), so the snapshot is that file system at one moment, clean.
func (b imageBackend) Snapshot(sn Snapshot) error {
	if err := b.frozenCopy(sn.Source, sn.FsType, snapshotName(sn.ID), 0); err != nil {
		return err
	}
	return syncDir(b.root, snapshotsDir)
}

// Restore copies the snapshot's image to the new volume's, at the new
// size, then mounts it and grows its file system (mountCopy), as Clone
// does.
func (b imageBackend) Restore(sn Snapshot, v newVolume) error {
	if err := copyImage(b.root, snapshotName(sn.ID), path.Join(imagesDir, v.ID), v.Size); err != nil {
		return fmt.Errorf("copying the image of snapshot %s: %w", sn.ID, err)
	}
	return b.mountCopy(v)
}

func (b imageBackend) DeleteSnapshot(id string) error { return removeCopy(b.root, id) }

// Snapshot copies the volume's file, its loop device flushed first
// (flushedCopy).
func (b blockBackend) Snapshot(sn Snapshot) error {
	if err := b.flushedCopy(sn.Source, snapshotName(sn.ID), 0); err != nil {
		return err
	}
	return syncDir(b.root, snapshotsDir)
}

// Restore copies the snapshot's file to the new volume's, at the new
// size.
func (b blockBackend) Restore(sn Snapshot, v newVolume) error {
	if err := copyImage(b.root, snapshotName(sn.ID), path.Join(imagesDir, v.ID), v.Size); err != nil {
		return fmt.Errorf("copying the file of snapshot %s: %w", sn.ID, err)
	}
	return syncDir(b.root, imagesDir)
}

func (b blockBackend) DeleteSnapshot(id string) error { return removeCopy(b.root, id) }

// removeCopy removes snapshots/<id>, a copied tree or file, durably.
func removeCopy(root *os.Root, id string) error {
	if err := root.RemoveAll(snapshotName(id)); err != nil {
		return fmt.Errorf("removing snapshot %s: %w", id, err)
	}
	if _, err := root.Stat(snapshotsDir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return syncDir(root, snapshotsDir)
}

// removeSnapshotData removes whatever lies at snapshots/<id> without
// knowing which backend made it: a snapshot without a record, which has
// none to say. A read-only btrfs subvolume, which no unlink can empty, is
// deleted as one; anything else is removed as a tree.
func (s *store) removeSnapshotData(id string) error {
	var st unix.Stat_t
	err := unix.Lstat(path.Join(s.rootPath, snapshotName(id)), &st)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		return nil
	case err != nil:
		return fmt.Errorf("stat snapshot %s: %w", id, err)
	}
	var fst unix.Statfs_t
	if err := unix.Statfs(path.Join(s.rootPath, snapshotsDir), &fst); err != nil {
		return fmt.Errorf("statfs %s: %w", path.Join(s.rootPath, snapshotsDir), err)
	}
	if fst.Type == unix.BTRFS_SUPER_MAGIC && isSubvolumeTop(&st) {
		return (&btrfsBackend{root: s.root, rootPath: s.rootPath}).destroy(snapshotsDir, id)
	}
	return removeCopy(s.root, id)
}
