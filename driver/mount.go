package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/stickyvol/stickyvol/internal/mountinfo"
)

// Mounter does the mounts behind NodePublishVolume and NodeUnpublishVolume.
// The default implementation (Config.Mounter nil) makes real bind mounts
// with mount(2) through golang.org/x/sys/unix, so no mount binary is needed.
type Mounter interface {
	// BindMount mounts the directory source at the existing directory
	// target and gives the new mount flags, as Remount does.
	BindMount(source, target string, flags BindFlags) error
	// Remount gives the mount at target flags, on top of the restrictions
	// it already has; it is a no-op on a mount that has them. The change
	// does not propagate to other mount namespaces (see BindMount).
	Remount(target string, flags BindFlags) error
	// Unmount removes the topmost mount at target.
	Unmount(target string) error
	// Mounted reports whether target is a mount point and whether what is
	// mounted there is source: the directory, or the block device (any
	// node of it). A missing target is not mounted and not an error; an
	// empty source is never what is mounted.
	Mounted(target, source string) (mountPoint, ofSource bool, err error)
}

// NewMounter returns the Mounter that makes real bind mounts.
func NewMounter() Mounter { return unixMounter{} }

type unixMounter struct{}

// BindMount attaches a mount that already has its flags: it clones source
// into a detached mount (open_tree), sets the flags on it (mount_setattr)
// and only then attaches it at target (move_mount).
//
// Flags cannot be added after the bind mount. The node plugin mounts in
// its own mount namespace, and kubelet and the container runtime see the
// target through mount propagation, which carries new mounts and unmounts
// to the peer mounts but not a change of flags: a remount after the bind
// changes only the plugin's copy, and pods would get the volume without
// nosuid, noexec or ro. A mount attached with its flags propagates as
// copies that have them. Kernels without mount_setattr (before 5.12) get
// the bind and remount, which applies the flags in this namespace only.
func (m unixMounter) BindMount(source, target string, flags BindFlags) error {
	if flags == 0 {
		if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount %s at %s: %w", source, target, err)
		}
		return nil
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, source, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("clone mount of %s: %w", source, err)
	}
	defer unix.Close(fd)
	err = unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, mountAttr(flags))
	if errors.Is(err, unix.ENOSYS) {
		return m.bindAndRemount(source, target, flags)
	}
	if err != nil {
		return fmt.Errorf("set flags %#x on a mount of %s: %w", uintptr(flags), source, err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach mount of %s at %s: %w", source, target, err)
	}
	return nil
}

// flagBits names each mount flag three ways: for mount(2) (BindFlags),
// in statfs f_flags (0 where statfs has no bit: strictatime is the absence
// of the others), and for mount_setattr.
var flagBits = []struct {
	ms   BindFlags
	st   uint64
	attr uint64
}{
	{unix.MS_RDONLY, unix.ST_RDONLY, unix.MOUNT_ATTR_RDONLY},
	{unix.MS_NOSUID, unix.ST_NOSUID, unix.MOUNT_ATTR_NOSUID},
	{unix.MS_NODEV, unix.ST_NODEV, unix.MOUNT_ATTR_NODEV},
	{unix.MS_NOEXEC, unix.ST_NOEXEC, unix.MOUNT_ATTR_NOEXEC},
	{unix.MS_NODIRATIME, unix.ST_NODIRATIME, unix.MOUNT_ATTR_NODIRATIME},
	{unix.MS_NOATIME, unix.ST_NOATIME, unix.MOUNT_ATTR_NOATIME},
	{unix.MS_RELATIME, unix.ST_RELATIME, unix.MOUNT_ATTR_RELATIME},
	{unix.MS_STRICTATIME, 0, unix.MOUNT_ATTR_STRICTATIME},
}

// mountAttr translates flags for mount_setattr, which, unlike a remount,
// only adds the attributes it is given and clears none but the atime
// choice, and that only when flags make one.
func mountAttr(flags BindFlags) *unix.MountAttr {
	attr := &unix.MountAttr{}
	for _, f := range flagBits {
		if flags&f.ms != 0 {
			attr.Attr_set |= f.attr
		}
	}
	if flags&(unix.MS_NOATIME|unix.MS_RELATIME|unix.MS_STRICTATIME) != 0 {
		attr.Attr_clr = unix.MOUNT_ATTR__ATIME
	}
	return attr
}

// bindAndRemount is BindMount for kernels without mount_setattr.
func (m unixMounter) bindAndRemount(source, target string, flags BindFlags) error {
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s at %s: %w", source, target, err)
	}
	// mount(2) ignores other flags given with MS_BIND on a new mount.
	if err := m.Remount(target, flags); err != nil {
		return errors.Join(err, unix.Unmount(target, unix.UMOUNT_NOFOLLOW))
	}
	return nil
}

// Remount remounts with MS_BIND|MS_REMOUNT|flags, which changes the flags
// of this one mount, not of the file system below it.
//
// A bind remount sets exactly the flags it is given (fs/namespace.c,
// path_mount): ro, nosuid, nodev and noexec left out are cleared, and only
// the atime flags are kept, and only when no atime flag is given. In a user
// namespace the flags a mount came with are locked, and a remount that
// would clear one fails with EPERM (can_change_locked_flags). So the flags
// the mount has now are given again: a fresh bind mount has those of the
// mount its source is on, which flags can add to but never lift. The
// exception is atime: when flags choose how access times are kept, that
// choice replaces the mount's (and fails where atime is locked).
func (unixMounter) Remount(target string, flags BindFlags) error {
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", target, err)
	}
	for _, f := range flagBits {
		if f.st != 0 && uint64(st.Flags)&f.st != 0 && (flags&atimeFlags == 0 || f.ms&atimeFlags == 0) {
			flags |= f.ms
		}
	}
	if err := unix.Mount("", target, "", uintptr(unix.MS_BIND|unix.MS_REMOUNT|flags), ""); err != nil {
		return fmt.Errorf("remount %s with flags %#x: %w", target, uintptr(flags), err)
	}
	return nil
}

func (unixMounter) Unmount(target string) error {
	// UMOUNT_NOFOLLOW: if target were replaced by a symlink, unmount
	// nothing rather than whatever it points to.
	if err := unix.Unmount(target, unix.UMOUNT_NOFOLLOW); err != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}

func (unixMounter) Mounted(target, source string) (bool, bool, error) {
	mountPoint, err := isMountPoint(target)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, false, nil
	case err != nil:
		return false, false, err
	case !mountPoint:
		return false, false, nil
	case source == "":
		return true, false, nil
	}
	// A bind mount shows the source directory itself: same device, same
	// inode. This also works where mountinfo's root field would need the
	// source's path relative to its file system.
	ti, err := os.Stat(target)
	if err != nil {
		return true, false, fmt.Errorf("stat %s: %w", target, err)
	}
	si, err := os.Stat(source)
	if err != nil {
		return true, false, fmt.Errorf("stat %s: %w", source, err)
	}
	if si.Mode()&fs.ModeDevice != 0 {
		// A bind-mounted device node is the same device, not always the
		// same node: a restarted agent's container has a /dev of its own,
		// and the targets still show the node of the one before.
		return true, ti.Mode().Type() == si.Mode().Type() && rdev(ti) == rdev(si), nil
	}
	return true, os.SameFile(ti, si), nil
}

// rdev is the device number a device node stands for.
func rdev(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Rdev
	}
	return 0
}

// isMountPoint reports whether p is the root of a mount. It asks statx for
// STATX_ATTR_MOUNT_ROOT (Linux 5.8+), which is exact and sees bind mounts of
// a directory of the same file system (where comparing st_dev with the
// parent sees nothing); older kernels fall back to /proc/self/mountinfo.
func isMountPoint(p string) (bool, error) {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT, unix.STATX_TYPE, &stx)
	if err != nil {
		return false, &fs.PathError{Op: "statx", Path: p, Err: err}
	}
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
	}
	resolved, err := filepath.EvalSymlinks(p)
	if err != nil {
		return false, err
	}
	mounts, err := mountinfo.Read()
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(mounts, func(m mountinfo.Mount) bool { return m.MountPoint == resolved }), nil
}
