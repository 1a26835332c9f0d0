package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/stickyvol/stickyvol/internal/mountinfo"
)

// Mounter does the mounts behind NodePublishVolume and NodeUnpublishVolume.
// The default implementation (Config.Mounter nil) makes real bind mounts
// with mount(2) through golang.org/x/sys/unix, so no mount binary is needed.
type Mounter interface {
	// BindMount mounts the directory source at the existing directory
	// target, read-only when readOnly is true.
	BindMount(source, target string, readOnly bool) error
	// RemountReadOnly makes the mount at target read-only; it is a no-op
	// on a mount that already is.
	RemountReadOnly(target string) error
	// Unmount removes the topmost mount at target.
	Unmount(target string) error
	// Mounted reports whether target is a mount point and whether what is
	// mounted there is the directory source. A missing target is not
	// mounted and not an error.
	Mounted(target, source string) (mountPoint, ofSource bool, err error)
}

// NewMounter returns the Mounter that makes real bind mounts.
func NewMounter() Mounter { return unixMounter{} }

type unixMounter struct{}

func (m unixMounter) BindMount(source, target string, readOnly bool) error {
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s at %s: %w", source, target, err)
	}
	if !readOnly {
		return nil
	}
	// A bind mount takes the flags of its source; read-only needs a second
	// call, which has a window where the target is writable. Nothing uses
	// the target before NodePublishVolume returns, so that is harmless.
	if err := m.RemountReadOnly(target); err != nil {
		return errors.Join(err, unix.Unmount(target, unix.UMOUNT_NOFOLLOW))
	}
	return nil
}

// RemountReadOnly remounts with MS_BIND|MS_REMOUNT|MS_RDONLY, which changes
// the flags of this one mount, not of the file system below it. The flags
// the mount already has (nosuid, nodev, noexec, atime) are passed again:
// in a user namespace the kernel refuses (EPERM) a remount that would drop
// such a flag when it is locked, and mount(2) clears flags not given.
func (unixMounter) RemountReadOnly(target string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", target, err)
	}
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY)
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_NOSUID, unix.MS_NOSUID},
		{unix.ST_NODEV, unix.MS_NODEV},
		{unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME},
		{unix.ST_NODIRATIME, unix.MS_NODIRATIME},
		{unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	if err := unix.Mount("", target, "", flags, ""); err != nil {
		return fmt.Errorf("remount %s read-only: %w", target, err)
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
	return true, os.SameFile(ti, si), nil
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
