package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/stickyvol/stickyvol/internal/mountinfo"
)

// dataRootSize is the size of each node's data root image. The file is
// sparse: it takes on the host's disk only what the volumes hold.
const dataRootSize = 8 << 30

// makeDataRoots gives each real node a btrfs file system of its own as
// /var/lib/stickyvol, so that its agent picks the btrfs backend (a subvolume
// per volume, its size enforced by a qgroup limit), as it would on a btrfs
// host: a sparse image under the node's directory, formatted and
// loop-mounted on the host before the node starts, then bound into the node
// like the plain directory it replaces. It stays mounted across node
// restarts, as a disk would. Teardown detaches the loop devices of block
// volumes left on it (detachVolumeLoops), then unmounts it with everything
// under the cluster directory; mount(8) attached its own loop device with
// autoclear, so the device goes with the mount.
func (c *Cluster) makeDataRoots(ctx context.Context) error {
	mounts, err := mountinfo.Read()
	if err != nil {
		return err
	}
	for _, n := range c.st.Nodes {
		dir := filepath.Join(c.nodeDir(n.Name), "stickyvol")
		if slices.ContainsFunc(mounts, func(m mountinfo.Mount) bool { return m.MountPoint == dir }) {
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		img := filepath.Join(c.nodeDir(n.Name), "stickyvol.btrfs")
		f, err := os.Create(img)
		if err != nil {
			return err
		}
		err = f.Truncate(dataRootSize)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("data root image of %s: %w", n.Name, err)
		}
		if _, err := run(ctx, "mkfs.btrfs", "-q", img); err != nil {
			return fmt.Errorf("data root of %s: %w", n.Name, err)
		}
		if _, err := run(ctx, "mount", "-o", "loop", img, dir); err != nil {
			return fmt.Errorf("data root of %s: %w", n.Name, err)
		}
	}
	return nil
}

// detachVolumeLoops detaches the loop devices whose backing files lie on a
// node's mounted data root: block volumes, which the driver attaches
// without autoclear (a bind-mounted device node does not hold its device
// open) and detaches at their last unpublish and at delete. A cluster torn
// down while such a volume still existed (a scenario whose claims were
// still being deleted) left its device attached, and with it the data
// root's file system and its deleted image, run after run. Kubelet, for its
// part, attaches a loop device of its own to a mapped block volume's device
// node, to keep the device from going while a pod maps it, and detaches it
// when it unmaps the volume; a kubelet stopped first leaves that one too, and
// it holds the volume's device open. So those go as well: loop devices whose
// backing file is the device node of a volume's loop device. Image volumes'
// devices have autoclear and go with their mounts. A device still open is
// detached by the kernel when it is closed. What cannot be detached is
// reported, not an error: teardown goes on.
func detachVolumeLoops(dir string, out io.Writer) {
	roots, _ := filepath.Glob(filepath.Join(dir, "nodes", "*", "stickyvol"))
	onRoot := map[uint64]bool{}
	for _, r := range roots {
		var st, parent unix.Stat_t
		// Only a mounted data root: an unmounted one is a directory of the
		// host's file system, where other loop devices' files may be.
		if unix.Stat(r, &st) == nil && unix.Stat(filepath.Dir(r), &parent) == nil && st.Dev != parent.Dev {
			onRoot[st.Dev] = true
		}
	}
	if len(onRoot) == 0 {
		return
	}
	loops := loopStatuses()
	volumes := map[uint64]bool{}
	for dev, info := range loops {
		if onRoot[info.Device] {
			volumes[dev] = true
		}
	}
	// Kubelet's first: they hold the volumes' devices open.
	for _, kubelets := range []bool{true, false} {
		for dev, info := range loops {
			if kubelets && volumes[info.Rdevice] || !kubelets && volumes[dev] {
				if err := detachLoop(dev); err != nil {
					fmt.Fprintf(out, "leaving loop device %d:%d attached: %v\n", unix.Major(dev), unix.Minor(dev), err)
				}
			}
		}
	}
}

// loopStatuses returns the attached loop devices' status, by the device's
// number (encoded as stat's st_rdev is).
func loopStatuses() map[uint64]*unix.LoopInfo64 {
	out := map[uint64]*unix.LoopInfo64{}
	devices, _ := filepath.Glob("/sys/block/loop*/loop")
	for _, d := range devices {
		f, err := os.OpenFile(filepath.Join("/dev", filepath.Base(filepath.Dir(d))), os.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
		if err == nil && unix.Fstat(int(f.Fd()), &st) == nil {
			out[st.Rdev] = info
		}
		_ = f.Close()
	}
	return out
}

func detachLoop(dev uint64) error {
	path := fmt.Sprintf("/dev/loop%d", unix.Minor(dev))
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detaching %s: %w", path, err)
	}
	return nil
}
