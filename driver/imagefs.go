package driver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The file systems an image volume may hold (ParamFsType), and how each is
// made, measured and grown.
//
// Growing online is an ioctl on the mounted file system, and the kernel
// asks a capability for it: CAP_SYS_RESOURCE for ext4 (ext4_resize_begin),
// CAP_SYS_ADMIN for xfs. A privileged container has both. Where the agent
// lacks CAP_SYS_RESOURCE (some sandboxes drop it from every process's
// bounding set), ext4 cannot grow while a pod has it mounted; it grows
// offline instead, with e2fsck and resize2fs on the image, the next time
// the volume is published with no pod using it. xfs cannot grow offline at
// all, and needs no such fallback.

// Supported file systems.
const (
	FsExt4 = "ext4"
	FsXFS  = "xfs"
)

type imageFS struct {
	name  string
	magic int64 // statfs f_type
	// minSize is the smallest file system mkfs makes: a smaller request
	// gets this size.
	minSize int64
	// mountData is the file system's mount options as mount(2) takes
	// them.
	mountData string
	// mkfs is the program and its arguments; the image's path follows.
	mkfs []string
	// size reads the file system's size in bytes from the open mounted
	// root dir and the image img.
	size func(dir *os.File, img string) (int64, error)
	// growOnline grows the mounted file system to size bytes.
	growOnline func(dir *os.File, size int64) error
	// growOffline, when there is one, grows the unmounted image to its
	// file's size.
	growOffline func(img string) error
}

var imageFileSystems = map[string]imageFS{
	FsExt4: {
		name:  FsExt4,
		magic: unix.EXT4_SUPER_MAGIC,
		// No reserved blocks (-m 0): the volume is one workload's, and its
		// claim's size is what that workload may fill. Lazy inode table
		// and journal init keep formatting a large sparse image quick; the
		// kernel zeroes them in the background once it is mounted.
		mkfs:        []string{"mke2fs", "-t", FsExt4, "-F", "-q", "-m", "0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"},
		size:        ext4Size,
		growOnline:  ext4GrowOnline,
		growOffline: ext4GrowOffline,
	},
	FsXFS: {
		name:  FsXFS,
		magic: unix.XFS_SUPER_MAGIC,
		// mkfs.xfs refuses file systems below 300 MiB (xfsprogs 5.19 on).
		minSize: 300 << 20,
		// A clone (clone.go) has its source's UUID, and xfs refuses to
		// mount a second file system with a UUID already mounted.
		mountData:  "nouuid",
		mkfs:       []string{"mkfs.xfs", "-q", "-f", "-K"},
		size:       xfsSize,
		growOnline: xfsGrowOnline,
	},
}

// fileSystemNames lists the supported file systems for messages.
func fileSystemNames() string { return FsExt4 + ", " + FsXFS }

// run runs a file system program found by findTool.
func run(name string, args ...string) error {
	p, err := findTool(name)
	if err != nil {
		return err
	}
	out, err := exec.Command(p, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ext4 superblock: 1024 bytes into the image; the fields read here.
const (
	ext4SuperOffset    = 1024
	ext4BlocksLo       = 0x4
	ext4LogBlockSize   = 0x18
	ext4FeatureIncompt = 0x60
	ext4BlocksHi       = 0x150
	ext4Incompat64bit  = 0x80
)

// ext4Size reads the block count from the image's superblock. The
// mounted file system writes its superblock through the loop device to
// the image's page cache, which a read of the file sees.
func ext4Size(_ *os.File, img string) (int64, error) {
	f, err := os.Open(img)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := io.ReadFull(io.NewSectionReader(f, ext4SuperOffset, int64(len(sb))), sb); err != nil {
		return 0, fmt.Errorf("reading the ext4 superblock of %s: %w", img, err)
	}
	le := binary.LittleEndian
	blocks := uint64(le.Uint32(sb[ext4BlocksLo:]))
	if le.Uint32(sb[ext4FeatureIncompt:])&ext4Incompat64bit != 0 {
		blocks |= uint64(le.Uint32(sb[ext4BlocksHi:])) << 32
	}
	return int64(blocks) << (10 + le.Uint32(sb[ext4LogBlockSize:])), nil
}

// ext4IocResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64): grow a
// mounted ext4 to a number of blocks (what resize2fs does online).
const ext4IocResizeFS = 0x40086610

func ext4GrowOnline(dir *os.File, size int64) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(dir.Fd()), &st); err != nil {
		return err
	}
	blocks := uint64(size) / uint64(st.Bsize)
	return ioctlPtr(dir, ext4IocResizeFS, unsafe.Pointer(&blocks))
}

// ext4GrowOffline checks the unmounted image, as resize2fs requires, and
// grows it. e2fsck -p repairs what is safe to repair and exits 1 when it
// did; anything more is an error.
func ext4GrowOffline(img string) error {
	err := run("e2fsck", "-f", "-p", img)
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 1 {
		err = nil
	}
	if err != nil {
		return err
	}
	return run("resize2fs", img)
}

// xfs ioctls and their structures (linux/xfs_fs.h).
const (
	xfsIocFSGeometryV1 = 0x80705864 // _IOR('X', 100, struct xfs_fsop_geom_v1)
	xfsIocFSGrowFSData = 0x4010586e // _IOW('X', 110, struct xfs_growfs_data)
)

// xfsGeometryV1 is struct xfs_fsop_geom_v1.
type xfsGeometryV1 struct {
	Blocksize, Rtextsize, Agblocks, Agcount, Logblocks, Sectsize, Inodesize, Imaxpct uint32
	Datablocks, Rtblocks, Rtextents, Logstart                                        uint64
	UUID                                                                             [16]byte
	Sunit, Swidth                                                                    uint32
	Version                                                                          int32
	Flags, Logsectsize, Rtsectsize, Dirblocksize                                     uint32
	_                                                                                uint32
}

// xfsGrowData is struct xfs_growfs_data.
type xfsGrowData struct {
	Newblocks uint64
	Imaxpct   uint32
	_         uint32
}

func xfsGeometry(dir *os.File) (xfsGeometryV1, error) {
	var g xfsGeometryV1
	err := ioctlPtr(dir, xfsIocFSGeometryV1, unsafe.Pointer(&g))
	return g, err
}

func xfsSize(dir *os.File, _ string) (int64, error) {
	g, err := xfsGeometry(dir)
	return int64(g.Datablocks) * int64(g.Blocksize), err
}

// xfsGrowOnline grows the data section, keeping the inode space limit.
func xfsGrowOnline(dir *os.File, size int64) error {
	g, err := xfsGeometry(dir)
	if err != nil {
		return err
	}
	arg := xfsGrowData{Newblocks: uint64(size) / uint64(g.Blocksize), Imaxpct: g.Imaxpct}
	return ioctlPtr(dir, xfsIocFSGrowFSData, unsafe.Pointer(&arg))
}

func ioctlPtr(f *os.File, req uintptr, arg unsafe.Pointer) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), req, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}
