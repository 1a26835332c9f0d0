package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Loop devices for image volumes (image.go), through the loop driver's
// ioctls (loop(4)); no losetup binary is needed.
//
// An image volume's device is attached with LO_FLAGS_AUTOCLEAR: the kernel
// detaches it when its last user goes, which for an image volume is the
// last mount of its file system. No device is left behind by an agent that
// dies, and one stays attached as long as any pod still has the file
// system mounted.
//
// A block volume's device (block.go) is attached without it: what a pod
// gets is a bind mount of the device node, and a mount of a device node is
// not a user of the device (only an open file or a mounted file system
// is), so autoclear would detach it as soon as the agent closed it. The
// agent detaches it itself (detachLoop) when the last target goes.
//
// A file must never be attached twice: two loop devices over one image
// are two file systems writing to the same blocks, and the image is lost.
// So before attaching, findLoop looks for a device that already holds the
// file (an agent restarted while pods kept the file system mounted), by
// the device and inode numbers the kernel reports for its backing file.

const (
	loopControl = "/dev/loop-control"
	loopMajor   = 7
	// attachTries bounds the race with other users of loop-control: the
	// free device it names may be taken before this driver configures it.
	attachTries = 8
)

// attachLoop attaches the file to a free loop device, read-write, and
// returns the device's path. With autoclear, the caller mounts it; until
// then the device is held open only by the returned file, which the caller
// closes after the mount (or to give the device up). Without, the device
// stays attached when held is closed, until detachLoop.
func attachLoop(file string, autoclear bool) (dev string, held *os.File, err error) {
	backing, err := os.OpenFile(file, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("opening image: %w", err)
	}
	defer backing.Close()
	ctl, err := os.OpenFile(loopControl, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("opening %s (is the loop driver loaded, and is the agent privileged?): %w", loopControl, err)
	}
	defer ctl.Close()
	for range attachTries {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("finding a free loop device: %w", err)
		}
		dev, err := loopNode(n)
		if err != nil {
			return "", nil, err
		}
		f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", nil, fmt.Errorf("opening %s: %w", dev, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd())}
		if autoclear {
			cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		}
		copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], file)
		err = unix.IoctlLoopConfigure(int(f.Fd()), &cfg)
		if err == nil {
			return dev, f, nil
		}
		_ = f.Close()
		if !errors.Is(err, unix.EBUSY) {
			return "", nil, fmt.Errorf("attaching %s to %s: %w", file, dev, err)
		}
	}
	return "", nil, fmt.Errorf("attaching %s: every free loop device was taken first, %d times", file, attachTries)
}

// loopNode returns the path of loop device n, making the device node when
// it is missing: in a container, /dev is a copy made when the container
// started, and a device the kernel added later is not in it.
func loopNode(n int) (string, error) {
	dev := "/dev/loop" + strconv.Itoa(n)
	err := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(loopMajor, uint32(n))))
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return "", fmt.Errorf("making device node %s: %w", dev, err)
	}
	return dev, nil
}

// findLoop returns the loop device whose backing file is file, or "" when
// none is. It reads the attached devices from /sys/block and asks each for
// its backing file's device and inode numbers (LOOP_GET_STATUS64), which
// do not depend on the mount namespace the file was attached from. A
// device whose backing file has been deleted is skipped: inode numbers are
// reused, and that device holds a file that is gone.
func findLoop(file string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", file, err)
	}
	devices, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return "", err
	}
	for _, backingFile := range devices {
		name, err := os.ReadFile(backingFile)
		if err != nil || strings.HasSuffix(strings.TrimSpace(string(name)), "(deleted)") {
			continue // detached meanwhile, or a deleted file
		}
		n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(filepath.Dir(filepath.Dir(backingFile))), "loop"))
		if err != nil {
			continue
		}
		same, dev, err := loopHolds(n, st)
		if err != nil {
			return "", err
		}
		if same {
			return dev, nil
		}
	}
	return "", nil
}

// loopHolds reports whether loop device n is attached to the file st.
func loopHolds(n int, st unix.Stat_t) (bool, string, error) {
	dev, err := loopNode(n)
	if err != nil {
		return false, "", err
	}
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, "", fmt.Errorf("opening %s: %w", dev, err)
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if errors.Is(err, unix.ENXIO) {
		return false, dev, nil // detached meanwhile
	}
	if err != nil {
		return false, "", fmt.Errorf("loop status of %s: %w", dev, err)
	}
	return info.Device == st.Dev && info.Inode == st.Ino, dev, nil
}

// loopResize makes loop device dev take the current size of its backing
// file (LOOP_SET_CAPACITY), after the file grew.
func loopResize(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", dev, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("updating the size of %s: %w", dev, err)
	}
	return nil
}

// detachLoop detaches loop device dev from its backing file (LOOP_CLR_FD).
// A device that something still has open (a pod's process) is not
// detached at once: the kernel marks it autoclear, and it goes with its
// last user. A device detached already is not an error.
func detachLoop(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", dev, err)
	}
	defer f.Close()
	err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
	if err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detaching %s: %w", dev, err)
	}
	return nil
}

// loopKeep makes sure loop device dev stays attached when its last user
// closes it: a detachLoop while the device was open marked it autoclear,
// and a block volume published again must not lose its device when that
// user goes.
func loopKeep(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", dev, err)
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		return fmt.Errorf("loop status of %s: %w", dev, err)
	}
	if info.Flags&unix.LO_FLAGS_AUTOCLEAR == 0 {
		return nil
	}
	info.Flags &^= unix.LO_FLAGS_AUTOCLEAR
	if err := unix.IoctlLoopSetStatus64(int(f.Fd()), info); err != nil {
		return fmt.Errorf("keeping %s attached: %w", dev, err)
	}
	return nil
}
