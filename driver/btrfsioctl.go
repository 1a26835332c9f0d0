package driver

import (
	"encoding/binary"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The btrfs ioctls of the btrfs backend. golang.org/x/sys/unix has the
// file system's magic number but none of these, so the request numbers and
// argument structs are written out here from the kernel's UAPI headers
// (include/uapi/linux/btrfs.h and btrfs_tree.h). The structs have no
// implicit padding: each field starts at a multiple of its own size, as in
// C, so Go lays them out byte for byte like the kernel does.
// TestBtrfsIoctlLayout pins the request numbers and sizes to what gcc
// computes from the headers.

// btrfsIoctlMagic is BTRFS_IOCTL_MAGIC, the type byte of every request.
const btrfsIoctlMagic = 0x94

// Directions of _IOC: the kernel writes to the argument (read by user
// space) or reads from it (written by user space).
const (
	iocWrite = 1
	iocRead  = 2
)

// btrfsIoc builds a request number as the kernel's _IOC does: direction in
// bits 30-31, argument size in bits 16-29, type in 8-15, number in 0-7.
func btrfsIoc(dir, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | btrfsIoctlMagic<<8 | nr
}

// Request numbers. The direction is the header's, which for
// BTRFS_IOC_QGROUP_LIMIT says _IOR although the kernel only reads the
// argument: the number is what it is.
var (
	// BTRFS_IOC_SUBVOL_CREATE: make subvolume args.Name in the directory
	// the ioctl is called on.
	ioctlSubvolCreate = btrfsIoc(iocWrite, 14, unsafe.Sizeof(btrfsVolArgs{}))
	// BTRFS_IOC_SNAP_DESTROY: delete subvolume args.Name of that directory.
	ioctlSnapDestroy = btrfsIoc(iocWrite, 15, unsafe.Sizeof(btrfsVolArgs{}))
	// BTRFS_IOC_TREE_SEARCH: read items of a metadata tree (CAP_SYS_ADMIN).
	ioctlTreeSearch = btrfsIoc(iocWrite|iocRead, 17, unsafe.Sizeof(btrfsSearchArgs{}))
	// BTRFS_IOC_INO_LOOKUP: the subvolume (tree) an open file is in.
	ioctlInoLookup = btrfsIoc(iocWrite|iocRead, 18, unsafe.Sizeof(btrfsInoLookupArgs{}))
	// BTRFS_IOC_WAIT_SYNC: wait until transaction *arg is committed.
	ioctlWaitSync = btrfsIoc(iocWrite, 22, unsafe.Sizeof(uint64(0)))
	// BTRFS_IOC_START_SYNC: start committing the running transaction and
	// write its ID to *arg.
	ioctlStartSync = btrfsIoc(iocRead, 24, unsafe.Sizeof(uint64(0)))
	// BTRFS_IOC_QUOTA_CTL: turn quotas (qgroups) on or off.
	ioctlQuotaCtl = btrfsIoc(iocWrite|iocRead, 40, unsafe.Sizeof(btrfsQuotaCtlArgs{}))
	// BTRFS_IOC_QGROUP_LIMIT: set the limits of a qgroup.
	ioctlQgroupLimit = btrfsIoc(iocRead, 43, unsafe.Sizeof(btrfsQgroupLimitArgs{}))
	// BTRFS_IOC_SNAP_DESTROY_V2: delete a subvolume, here by its ID
	// (CAP_SYS_ADMIN).
	ioctlSnapDestroyV2 = btrfsIoc(iocWrite, 63, unsafe.Sizeof(btrfsVolArgsV2{}))
	// BTRFS_IOC_SNAP_CREATE_V2: snapshot the subvolume open at args.Fd as
	// args.Name in the directory the ioctl is called on (writable unless
	// Flags asks for read-only).
	ioctlSnapCreateV2 = btrfsIoc(iocWrite, 23, unsafe.Sizeof(btrfsSnapArgs{}))
)

// btrfsVolArgs is struct btrfs_ioctl_vol_args (4096 bytes): fd (unused by
// the calls here) and a NUL-terminated name of at most 4087 bytes.
type btrfsVolArgs struct {
	Fd   int64
	Name [4088]byte
}

// btrfsVolArgsV2 is struct btrfs_ioctl_vol_args_v2 (4096 bytes) as
// BTRFS_IOC_SNAP_DESTROY_V2 reads it with Flags BTRFS_SUBVOL_SPEC_BY_ID:
// fd, transid, flags, a 32-byte union unused here, then a union whose
// first 8 bytes are the ID of the subvolume to delete.
type btrfsVolArgsV2 struct {
	Fd       int64
	TransID  uint64
	Flags    uint64
	Unused   [4]uint64
	SubvolID uint64
	Rest     [4032]byte
}

// btrfsSnapArgs is struct btrfs_ioctl_vol_args_v2 (4096 bytes) as
// BTRFS_IOC_SNAP_CREATE_V2 reads it: Fd is the source subvolume, Flags 0
// makes a writable snapshot without qgroup inheritance (btrfsSubvolRdonly
// a read-only one), and Name (the
// union btrfsVolArgsV2 reads as SubvolID) is the new subvolume's name,
// NUL-terminated, at most 4039 bytes.
type btrfsSnapArgs struct {
	Fd      int64
	TransID uint64
	Flags   uint64
	Unused  [4]uint64
	Name    [4040]byte
}

// btrfsInoLookupArgs is struct btrfs_ioctl_ino_lookup_args (4096 bytes).
// Called on an open file with TreeID 0, the kernel answers in TreeID the ID
// of the subvolume the file is in. ObjectID is the inode to find the path
// of, BTRFS_FIRST_FREE_OBJECTID (256) being a subvolume's top directory,
// whose path within it is empty; Name receives that path.
type btrfsInoLookupArgs struct {
	TreeID   uint64
	ObjectID uint64
	Name     [4080]byte
}

// btrfsQuotaCtlArgs is struct btrfs_ioctl_quota_ctl_args (16 bytes): a
// command, BTRFS_QUOTA_CTL_ENABLE (1) here, and a status the kernel does
// not use.
type btrfsQuotaCtlArgs struct {
	Cmd    uint64
	Status uint64
}

// btrfsQgroupLimitArgs is struct btrfs_ioctl_qgroup_limit_args (48 bytes):
// the qgroup ID, then struct btrfs_qgroup_limit. A qgroup ID has the level
// in its top 16 bits; the level-0 qgroup of a subvolume (0/<id>) has the
// subvolume's ID as its own. Flags says which limits apply:
// BTRFS_QGROUP_LIMIT_MAX_RFER (1) makes MaxRfer, the bytes the qgroup's
// subvolume may reference, the limit.
type btrfsQgroupLimitArgs struct {
	QgroupID uint64
	Flags    uint64
	MaxRfer  uint64
	MaxExcl  uint64
	RsvRfer  uint64
	RsvExcl  uint64
}

// btrfsSearchKey is struct btrfs_ioctl_search_key (104 bytes): the tree to
// search and the smallest and largest key (objectid, type, offset, compared
// in that order) and transaction to return. NrItems is how many items to
// return at most; the kernel sets it to how many it returned. Unused pads
// the struct to its size in the header.
type btrfsSearchKey struct {
	TreeID      uint64
	MinObjectID uint64
	MaxObjectID uint64
	MinOffset   uint64
	MaxOffset   uint64
	MinTransID  uint64
	MaxTransID  uint64
	MinType     uint32
	MaxType     uint32
	NrItems     uint32
	Unused      [36]byte
}

// btrfsSearchArgs is struct btrfs_ioctl_search_args (4096 bytes): the key,
// then a buffer the kernel fills with NrItems results, each a struct
// btrfs_ioctl_search_header (btrfsSearchHeaderSize bytes, native byte
// order) followed by the item's Len bytes as they are on disk (little
// endian).
type btrfsSearchArgs struct {
	Key btrfsSearchKey
	Buf [4096 - 104]byte
}

// struct btrfs_ioctl_search_header: u64 transid, objectid, offset; u32
// type, len.
const (
	btrfsSearchHeaderSize = 32
	btrfsSearchHeaderLen  = 28 // offset of len
)

// Constants of btrfs.h and btrfs_tree.h.
const (
	btrfsRootTreeObjectID   = 1   // BTRFS_ROOT_TREE_OBJECTID: the tree of subvolumes
	btrfsQuotaTreeObjectID  = 8   // BTRFS_QUOTA_TREE_OBJECTID: the tree of qgroup items
	btrfsRootRefKey         = 156 // BTRFS_ROOT_REF_KEY: (parent ID, 156, child ID) in the root tree
	btrfsQgroupInfoKey      = 242 // BTRFS_QGROUP_INFO_KEY: (0, 242, qgroup ID) holds its counts
	btrfsFirstFreeObjectID  = 256 // BTRFS_FIRST_FREE_OBJECTID: a subvolume's top directory
	btrfsQuotaCtlEnable     = 1   // BTRFS_QUOTA_CTL_ENABLE
	btrfsQgroupLimitMaxRfer = 1   // BTRFS_QGROUP_LIMIT_MAX_RFER
	btrfsSubvolSpecByID     = 16  // BTRFS_SUBVOL_SPEC_BY_ID
	btrfsSubvolRdonly       = 2   // BTRFS_SUBVOL_RDONLY: a read-only snapshot
)

// struct btrfs_qgroup_info_item: le64 generation, rfer, rfer_cmpr, excl,
// excl_cmpr. rfer is what the qgroup's subvolume references, the count
// its limit applies to.
const btrfsQgroupInfoRferOffset = 8

// btrfsIoctl calls ioctl(2) with a pointer argument on f.
func btrfsIoctl(f *os.File, req uintptr, arg unsafe.Pointer) error {
	conn, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	if err := conn.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
	}); err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// btrfsKey is the key of a btrfs item.
type btrfsKey struct {
	ObjectID uint64
	Type     uint32
	Offset   uint64
}

// searchResults calls fn with the key and data of each of the nrItems
// results of a tree search in buf, until fn returns false. It stops at a
// result that does not fit in buf.
func searchResults(buf []byte, nrItems uint32, fn func(k btrfsKey, item []byte) bool) {
	for range nrItems {
		if len(buf) < btrfsSearchHeaderSize {
			return
		}
		k := btrfsKey{
			ObjectID: binary.NativeEndian.Uint64(buf[8:]),
			Offset:   binary.NativeEndian.Uint64(buf[16:]),
			Type:     binary.NativeEndian.Uint32(buf[24:]),
		}
		n := int(binary.NativeEndian.Uint32(buf[btrfsSearchHeaderLen:]))
		item := buf[btrfsSearchHeaderSize:]
		if n > len(item) || !fn(k, item[:n]) {
			return
		}
		buf = item[n:]
	}
}

// qgroupRfer finds the referenced bytes of qgroup id in the results of a
// tree search: nrItems results in buf. ok is false when none is that
// qgroup's info item.
func qgroupRfer(buf []byte, nrItems uint32, id uint64) (rfer int64, ok bool) {
	want := btrfsKey{Type: btrfsQgroupInfoKey, Offset: id}
	searchResults(buf, nrItems, func(k btrfsKey, item []byte) bool {
		if k == want && len(item) >= btrfsQgroupInfoRferOffset+8 {
			rfer, ok = int64(binary.LittleEndian.Uint64(item[btrfsQgroupInfoRferOffset:])), true
		}
		return !ok
	})
	return rfer, ok
}
