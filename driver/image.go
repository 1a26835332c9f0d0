package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"

	"golang.org/x/sys/unix"
)

// BackendImage keeps a volume as a file system of its own in a sparse
// image file under the data root, loop-mounted (StorageClass parameter
// volumeType: image). Its size holds on any data root file system, since
// the file system in the image is only as large as the image.
//
//	<data-root>/images/<id>      the image: a sparse file, formatted
//	<data-root>/volumes/<id>/    where the agent mounts it; bind-mounted into pods
//
// The agent keeps every ready image volume mounted at volumes/<id> while it
// runs: Create mounts it, the store mounts the others at start (activate),
// Delete unmounts it. So the path that NodePublishVolume bind-mounts is the
// file system's root at all times, as for the other backends, and the
// targets' bind mounts compare equal to it.
//
// In a container that mount lives in the agent's own mount namespace: the
// data root is not a Bidirectional mount, so it does not reach the host,
// and it goes with the container. Pods keep theirs (bind mounts made under
// the kubelet root, which is Bidirectional), and they keep the loop device
// attached. A restarted agent finds that device by its backing file
// (findLoop) and mounts it again, which is the same file system, never a
// second one over the same image.
//
// k8s.io/mount-utils' SafeFormatAndMount does not fit here: it asks blkid
// whether a device is formatted and mounts with the mount binary, while
// this backend knows from the volume's record that it formatted the image,
// and mounts with mount(2) like the rest of the driver. Only mkfs (and the
// offline ext4 resize) run as programs; growing online is an ioctl
// (imagefs.go).
const BackendImage = "image"

const imagesDir = "images"

type imageBackend struct {
	root     *os.Root
	rootPath string
}

func (imageBackend) Name() string { return BackendImage }

func (b imageBackend) Path(id string) string { return path.Join(b.rootPath, volumesDir, id) }

func (b imageBackend) image(id string) string { return path.Join(b.rootPath, imagesDir, id) }

// DataPath is the image: what the host holds of the volume, while its
// mount point there is empty (the agent mounts it in its own namespace).
func (b imageBackend) DataPath(id string) string { return b.image(id) }

// Create makes the sparse image, formats it, mounts it at the volume's
// path and gives the file system's root the mode asked for.
func (b imageBackend) Create(v newVolume) error {
	fsys, ok := imageFileSystems[v.FsType]
	if !ok {
		return fmt.Errorf("%w: file system %q for an image volume (supported: %s)", errUnsupported, v.FsType, fileSystemNames())
	}
	if _, err := findTool(fsys.mkfs[0]); err != nil {
		return err
	}
	if err := makeSparse(b.root, v.ID, v.Size, "the image"); err != nil {
		return err
	}
	if err := run(fsys.mkfs[0], append(fsys.mkfs[1:], b.image(v.ID))...); err != nil {
		return fmt.Errorf("formatting the image %s: %w", v.FsType, err)
	}
	if err := b.root.Mkdir(volumeName(v.ID), 0o700); err != nil {
		return fmt.Errorf("creating mount point: %w", err)
	}
	if _, err := b.mount(v.ID, v.FsType); err != nil {
		return err
	}
	if err := os.Chmod(b.Path(v.ID), v.Mode); err != nil {
		return fmt.Errorf("setting the mode of the volume's root: %w", err)
	}
	if err := syncFS(b.Path(v.ID)); err != nil {
		return err
	}
	if err := syncDir(b.root, imagesDir); err != nil {
		return err
	}
	return syncDir(b.root, volumesDir)
}

// Activate makes sure the image is mounted at the volume's path: it is
// when this agent mounted it before, or else the loop device that already
// holds the image (a pod kept it mounted across an agent restart) or a new
// one is mounted there. The file system then grows to the image's size, if
// an expansion was cut short.
func (b imageBackend) Activate(id, fsType string) error {
	mounted, err := isMountPoint(b.Path(id))
	if err != nil {
		return err
	}
	exclusive := false
	if !mounted {
		if exclusive, err = b.mount(id, fsType); err != nil {
			return err
		}
	} else if err := b.thawMounted(id, fsType); err != nil {
		return err
	}
	return b.grow(id, fsType, exclusive)
}

// thawMounted thaws the volume's mounted file system, which an agent that
// died while cloning it (clone.go) left frozen.
func (b imageBackend) thawMounted(id, fsType string) error {
	fsys, ok := imageFileSystems[fsType]
	if !ok {
		return fmt.Errorf("%w: file system %q for an image volume", errUnsupported, fsType)
	}
	dir, err := b.openMounted(id, fsys)
	if err != nil {
		return err
	}
	defer dir.Close()
	return thaw(dir)
}

// mount mounts the image at the volume's path. fresh reports that it
// attached a new loop device, so nothing else has the file system mounted.
func (b imageBackend) mount(id, fsType string) (fresh bool, err error) {
	img, mp := b.image(id), b.Path(id)
	dev, err := findLoop(img)
	if err != nil {
		return false, err
	}
	if dev == "" {
		var held *os.File
		if dev, held, err = attachLoop(img, true); err != nil {
			return false, err
		}
		// Closing the device after the mount leaves the mount its only
		// user; closing it without one detaches it (autoclear).
		defer held.Close()
		fresh = true
	}
	if err := unix.Mount(dev, mp, fsType, 0, imageFileSystems[fsType].mountData); err != nil {
		return false, fmt.Errorf("mounting %s (%s) at %s: %w", dev, fsType, mp, err)
	}
	return fresh, nil
}

// NodeExpand grows the mounted file system to the image's size, while pods
// use it.
func (b imageBackend) NodeExpand(id, fsType string) error { return b.grow(id, fsType, false) }

// ExpandUnpublished grows the file system of a volume no pod has mounted,
// offline where online growth is refused.
func (b imageBackend) ExpandUnpublished(id, fsType string) error { return b.grow(id, fsType, true) }

// grow brings the mounted file system to the image's size: the loop device
// learns the file's size, then the file system grows online. Where the
// kernel refuses that (EPERM: ext4 without CAP_SYS_RESOURCE) and exclusive
// says nothing but this agent has it mounted, it grows offline: unmounted,
// checked, resized, mounted again.
func (b imageBackend) grow(id, fsType string, exclusive bool) error {
	fsys, ok := imageFileSystems[fsType]
	if !ok {
		return fmt.Errorf("%w: file system %q for an image volume", errUnsupported, fsType)
	}
	img, mp := b.image(id), b.Path(id)
	fi, err := os.Stat(img)
	if err != nil {
		return fmt.Errorf("stat image: %w", err)
	}
	dev, err := findLoop(img)
	if err != nil {
		return err
	}
	if dev == "" {
		return fmt.Errorf("image of volume %s is not attached to a loop device", id)
	}
	if err := loopResize(dev); err != nil {
		return err
	}
	dir, err := b.openMounted(id, fsys)
	if err != nil {
		return err
	}
	defer dir.Close()
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(dir.Fd()), &st); err != nil {
		return fmt.Errorf("statfs %s: %w", mp, err)
	}
	size, err := fsys.size(dir, img)
	if err != nil {
		return err
	}
	if fi.Size()-size < st.Bsize {
		return nil // as large as the image, to the block
	}
	err = fsys.growOnline(dir, fi.Size())
	switch {
	case err == nil:
		return nil
	case !errors.Is(err, unix.EPERM) || fsys.growOffline == nil:
		return fmt.Errorf("growing %s of volume %s from %d to %d bytes: %w", fsType, id, size, fi.Size(), err)
	case !exclusive:
		return fmt.Errorf("%w: growing %s of volume %s online needs CAP_SYS_RESOURCE, which the agent lacks (%w); "+
			"it grows offline when the volume is next published with no pod using it", errOfflineOnly, fsType, id, err)
	}
	_ = dir.Close()
	if err := unix.Unmount(mp, unix.UMOUNT_NOFOLLOW); err != nil {
		return fmt.Errorf("unmounting %s to grow it offline: %w", mp, err)
	}
	growErr := fsys.growOffline(img)
	if _, err := b.mount(id, fsType); err != nil {
		return errors.Join(growErr, err)
	}
	return growErr
}

// openMounted opens the volume's mounted root, checking that it is the
// image's file system.
func (b imageBackend) openMounted(id string, fsys imageFS) (*os.File, error) {
	dir, err := os.Open(b.Path(id))
	if err != nil {
		return nil, fmt.Errorf("opening the volume's root: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(dir.Fd()), &st); err != nil {
		_ = dir.Close()
		return nil, fmt.Errorf("statfs %s: %w", b.Path(id), err)
	}
	if st.Type != fsys.magic {
		_ = dir.Close()
		return nil, fmt.Errorf("volume %s is not mounted at %s: statfs type %#x, not %s", id, b.Path(id), st.Type, fsys.name)
	}
	return dir, nil
}

// Expand makes the image size bytes long. The file system grows in
// NodeExpand, which the CO calls next (NodeExpansionRequired), or when the
// volume is next published or mounted.
func (b imageBackend) Expand(id string, size int64) error {
	f, err := b.root.OpenFile(path.Join(imagesDir, id), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening image: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() >= size {
		return nil
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("growing the image: %w", err)
	}
	return f.Sync()
}

// Delete unmounts the volume's file system and removes the image and the
// mount point. The loop device goes by itself with its last mount.
func (b imageBackend) Delete(id string) error {
	mp := b.Path(id)
	for range maxStackedMounts {
		mounted, err := isMountPoint(mp)
		if errors.Is(err, fs.ErrNotExist) || err == nil && !mounted {
			break
		}
		if err != nil {
			return err
		}
		if err := unix.Unmount(mp, unix.UMOUNT_NOFOLLOW); err != nil {
			return fmt.Errorf("unmounting %s: %w", mp, err)
		}
	}
	if err := b.root.Remove(path.Join(imagesDir, id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing image: %w", err)
	}
	if err := b.root.Remove(volumeName(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing mount point: %w", err)
	}
	if err := syncDir(b.root, volumesDir); err != nil {
		return err
	}
	if _, err := b.root.Stat(imagesDir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return syncDir(b.root, imagesDir)
}

// Usage is the mounted file system's own statfs: O(1), and exact, since
// the file system holds this volume only.
func (b imageBackend) Usage(id string) (volumeUsage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(b.Path(id), &st); err != nil {
		return volumeUsage{}, fmt.Errorf("statfs %s: %w", b.Path(id), err)
	}
	if st.Type != unix.EXT4_SUPER_MAGIC && st.Type != unix.XFS_SUPER_MAGIC {
		return volumeUsage{}, fmt.Errorf("volume %s is not mounted at %s (statfs type %#x)", id, b.Path(id), st.Type)
	}
	bs := int64(st.Bsize)
	return volumeUsage{
		UsedBytes:  int64(st.Blocks-st.Bfree) * bs,
		FreeBytes:  int64(st.Bavail) * bs,
		Inodes:     true,
		UsedInodes: int64(st.Files - st.Ffree),
		FreeInodes: int64(st.Ffree),
	}, nil
}

// makeSparse creates images/<id>, size bytes long and holding no blocks
// yet, and makes it durable (not its directory entry: the caller syncs
// images/ once it is done). what names the file in errors.
func makeSparse(root *os.Root, id string, size int64, what string) error {
	if err := root.MkdirAll(imagesDir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", imagesDir, err)
	}
	f, err := root.OpenFile(path.Join(imagesDir, id), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", what, err)
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EFBIG) {
		return fmt.Errorf("%w: sizing %s to %d bytes: %w", errNoSpace, what, size, err)
	}
	if err != nil {
		return fmt.Errorf("sizing %s: %w", what, err)
	}
	return nil
}

// syncFS flushes the file system that holds p.
func syncFS(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", p, err)
	}
	return nil
}

// findTool finds a program in PATH or in the sbin directories, which an
// agent's PATH may leave out.
func findTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := path.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: image volumes need %s (e2fsprogs), which is not in the agent's PATH, /usr/sbin or /sbin", errUnsupported, name)
}
