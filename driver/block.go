package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// BackendBlock keeps a volume as a raw sparse file under the data root,
// served to pods as a loop device: the CSI block access type, Kubernetes'
// volumeMode: Block. It is chosen by the capability, never by a class
// parameter.
//
//	<data-root>/images/<id>      the file: sparse, never formatted
//
// It is a backend of its own rather than a mode of the image backend
// because the two share only the file and the loop ioctls (loop.go), not
// their life: an image volume is formatted, attached and mounted by the
// agent for as long as it exists, and publishes a directory; a block
// volume is attached only while a target has it, and publishes a device
// node onto a file. A mode would put a branch in every method of
// imageBackend.
//
// The device stays attached while any target has the volume, and no
// longer: NodePublishVolume attaches it (or finds the one that already
// holds the file, findLoop, after an agent restart: a file is never
// attached twice), NodeUnpublishVolume detaches it when the last target is
// gone, DeleteVolume detaches it before removing the file. It is attached
// without autoclear (see loop.go): a bind mount of the device node does not
// hold the device, so nothing but the agent would keep it attached. After
// a node reboot nothing is attached and the next publish attaches afresh.
const BackendBlock = "block"

type blockBackend struct {
	root     *os.Root
	rootPath string
}

// deviceBackend is a backend whose volumes are published as a device
// (blockBackend), not a directory.
type deviceBackend interface {
	// Attach returns the loop device holding the volume's file,
	// attaching one if none does.
	Attach(id string) (string, error)
	// Detach detaches the volume's device, if it has one.
	Detach(id string) error
	// Device returns the volume's device, or "" when none is attached.
	Device(id string) (string, error)
}

func (blockBackend) Name() string { return BackendBlock }

// Path is the file: what holds the volume, and what the volume context
// names for people to read. NodePublishVolume publishes the device
// instead (deviceBackend).
func (b blockBackend) Path(id string) string { return path.Join(b.rootPath, imagesDir, id) }

// Create makes the sparse file, as large as the volume.
func (b blockBackend) Create(v newVolume) error {
	if err := makeSparse(b.root, v.ID, v.Size, "the block volume's file"); err != nil {
		return err
	}
	return syncDir(b.root, imagesDir)
}

// Expand makes the file size bytes long and, when the volume is attached,
// tells the loop device, so a pod sees the new size at once: there is no
// file system to grow in a node step.
func (b blockBackend) Expand(id string, size int64) error {
	f, err := b.root.OpenFile(path.Join(imagesDir, id), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening the block volume's file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() < size {
		if err := f.Truncate(size); err != nil {
			return fmt.Errorf("growing the block volume's file: %w", err)
		}
		if err := f.Sync(); err != nil {
			return err
		}
	}
	return b.refresh(id)
}

// NodeExpand makes an attached device take its file's size; Expand did,
// unless the agent stopped in between.
func (b blockBackend) NodeExpand(id, _ string) error { return b.refresh(id) }

// ExpandUnpublished is NodeExpand: a device attached later takes the
// file's size anyway.
func (b blockBackend) ExpandUnpublished(id, _ string) error { return b.refresh(id) }

func (b blockBackend) refresh(id string) error {
	dev, err := b.Device(id)
	if err != nil || dev == "" {
		return err
	}
	return loopResize(dev)
}

// Delete detaches the device, if any, and removes the file.
func (b blockBackend) Delete(id string) error {
	if err := b.Detach(id); err != nil {
		return err
	}
	if err := b.root.Remove(path.Join(imagesDir, id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the block volume's file: %w", err)
	}
	if _, err := b.root.Stat(imagesDir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return syncDir(b.root, imagesDir)
}

// Usage is what the file holds on disk (its allocated blocks). A raw
// device has no free space or inodes of its own to report.
func (b blockBackend) Usage(id string) (volumeUsage, error) {
	var st unix.Stat_t
	if err := unix.Stat(b.Path(id), &st); err != nil {
		return volumeUsage{}, fmt.Errorf("stat %s: %w", b.Path(id), err)
	}
	return volumeUsage{UsedBytes: st.Blocks * 512}, nil
}

func (b blockBackend) Attach(id string) (string, error) {
	dev, err := b.Device(id)
	if err != nil {
		return "", err
	}
	if dev != "" {
		return dev, loopKeep(dev)
	}
	dev, held, err := attachLoop(b.Path(id), false)
	if err != nil {
		return "", err
	}
	return dev, held.Close()
}

func (b blockBackend) Detach(id string) error {
	dev, err := b.Device(id)
	if err != nil || dev == "" {
		return err
	}
	return detachLoop(dev)
}

// Device finds the volume's device by its file (findLoop); a volume whose
// file is missing has none.
func (b blockBackend) Device(id string) (string, error) {
	dev, err := findLoop(b.Path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	return dev, err
}

// mountSource is what a target of v shows when v is published there: its
// directory, or for a block volume its device, "" when none is attached
// (then no target can show it).
func (s *store) mountSource(v Volume) (string, error) {
	if d, ok := s.backend(v).(deviceBackend); ok {
		return d.Device(v.ID)
	}
	return s.publishPath(v), nil
}

func blockNote(block bool) string {
	if block {
		return "a block volume"
	}
	return "a file system volume"
}

// publishDevice attaches block volume v's device (or finds the one
// attached) and bind-mounts it onto the target file, made here if it does
// not exist. When it cannot, the target is forgotten and a file it made
// removed, and a device it attached for this target alone is detached
// again; a target where the device is mounted stays recorded.
func (s *nodeServer) publishDevice(ctx context.Context, st *store, v Volume, t Target, exists, alone bool) error {
	d, ok := st.backend(v).(deviceBackend)
	if !ok {
		return status.Errorf(codes.Internal, "volume %s: backend %s has no devices", v.ID, v.Backend)
	}
	undo := func(err error) error {
		if !exists {
			_ = os.Remove(t.Path)
		}
		if derr := st.dropTarget(v.ID, t.Path); derr != nil {
			klog.FromContext(ctx).Error(derr, "Cannot forget the target of a failed publish")
		}
		if alone {
			if derr := d.Detach(v.ID); derr != nil {
				klog.FromContext(ctx).Error(derr, "Cannot detach the device of a failed publish")
			}
		}
		return err
	}
	dev, err := d.Attach(v.ID)
	if err != nil {
		return undo(statusFor(err, "attaching volume "+v.ID+" to a loop device"))
	}
	if !exists {
		f, err := os.OpenFile(t.Path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return undo(status.Errorf(codes.Internal, "creating target file: %v", err))
		}
		_ = f.Close()
	}
	mountPoint, ours, err := s.mounter.Mounted(t.Path, dev)
	switch {
	case err != nil:
		return statusFor(err, "checking target path")
	case ours:
		return nil
	case mountPoint:
		return undo(status.Errorf(codes.FailedPrecondition,
			"target path %s already has a mount that is not volume %s", t.Path, v.ID))
	}
	if err := s.mounter.BindMount(dev, t.Path, 0); err != nil {
		return undo(statusFor(err, "mounting the device of volume "+v.ID))
	}
	return nil
}

// checkAccessType refuses a capability whose access type is not the
// volume's: a block volume is used as a device, any other as a mount.
func checkAccessType(v Volume, c *csi.VolumeCapability) error {
	isBlock, block := v.Backend == BackendBlock, c.GetBlock() != nil
	if isBlock == block {
		return nil
	}
	want := "mount"
	if block {
		want = "block"
	}
	return status.Errorf(codes.InvalidArgument, "volume %s is %s, and the request has the %s access type", v.ID, blockNote(isBlock), want)
}

// removeEmptyFile removes p if it is an empty regular file, such as the
// target file publishDevice makes, and leaves anything else alone.
func removeEmptyFile(p string) {
	if fi, err := os.Lstat(p); err == nil && fi.Mode().IsRegular() && fi.Size() == 0 {
		_ = os.Remove(p)
	}
}
