package driver

import (
	"encoding/binary"
	"testing"
	"unsafe"
)

// TestBtrfsIoctlLayout pins the request numbers and struct sizes to what
// gcc computes from <linux/btrfs.h> (printf("%#lx", BTRFS_IOC_...) and
// sizeof), so a slip in btrfsioctl.go shows here rather than as ENOTTY or
// a corrupted argument on a real file system.
func TestBtrfsIoctlLayout(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"BTRFS_IOC_SUBVOL_CREATE", ioctlSubvolCreate, 0x5000940e},
		{"BTRFS_IOC_SNAP_DESTROY", ioctlSnapDestroy, 0x5000940f},
		{"BTRFS_IOC_TREE_SEARCH", ioctlTreeSearch, 0xd0009411},
		{"BTRFS_IOC_INO_LOOKUP", ioctlInoLookup, 0xd0009412},
		{"BTRFS_IOC_WAIT_SYNC", ioctlWaitSync, 0x40089416},
		{"BTRFS_IOC_START_SYNC", ioctlStartSync, 0x80089418},
		{"BTRFS_IOC_QUOTA_CTL", ioctlQuotaCtl, 0xc0109428},
		{"BTRFS_IOC_QGROUP_LIMIT", ioctlQgroupLimit, 0x8030942b},
		{"BTRFS_IOC_SNAP_DESTROY_V2", ioctlSnapDestroyV2, 0x5000943f},
		{"BTRFS_IOC_SNAP_CREATE_V2", ioctlSnapCreateV2, 0x50009417},
		{"sizeof(struct btrfs_ioctl_vol_args_v2)", unsafe.Sizeof(btrfsVolArgsV2{}), 4096},
		{"sizeof(struct btrfs_ioctl_vol_args_v2) (snapshot view)", unsafe.Sizeof(btrfsSnapArgs{}), 4096},
		{"offsetof(struct btrfs_ioctl_vol_args_v2, name)", unsafe.Offsetof(btrfsSnapArgs{}.Name), 56},
		{"offsetof(struct btrfs_ioctl_vol_args_v2, subvolid)", unsafe.Offsetof(btrfsVolArgsV2{}.SubvolID), 56},
		{"sizeof(struct btrfs_ioctl_vol_args)", unsafe.Sizeof(btrfsVolArgs{}), 4096},
		{"sizeof(struct btrfs_ioctl_ino_lookup_args)", unsafe.Sizeof(btrfsInoLookupArgs{}), 4096},
		{"sizeof(struct btrfs_ioctl_quota_ctl_args)", unsafe.Sizeof(btrfsQuotaCtlArgs{}), 16},
		{"sizeof(struct btrfs_ioctl_qgroup_limit_args)", unsafe.Sizeof(btrfsQgroupLimitArgs{}), 48},
		{"sizeof(struct btrfs_ioctl_search_key)", unsafe.Sizeof(btrfsSearchKey{}), 104},
		{"offsetof(struct btrfs_ioctl_search_key, nr_items)", unsafe.Offsetof(btrfsSearchKey{}.NrItems), 64},
		{"sizeof(struct btrfs_ioctl_search_args)", unsafe.Sizeof(btrfsSearchArgs{}), 4096},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
}

// TestQgroupRfer reads a tree search result as the kernel lays it out:
// an item of another key first, then the qgroup's info item.
func TestQgroupRfer(t *testing.T) {
	var buf []byte
	item := func(objectID uint64, typ uint32, offset uint64, data []byte) {
		h := make([]byte, btrfsSearchHeaderSize)
		binary.NativeEndian.PutUint64(h[8:], objectID)
		binary.NativeEndian.PutUint64(h[16:], offset)
		binary.NativeEndian.PutUint32(h[24:], typ)
		binary.NativeEndian.PutUint32(h[btrfsSearchHeaderLen:], uint32(len(data)))
		buf = append(append(buf, h...), data...)
	}
	info := make([]byte, 40)
	binary.LittleEndian.PutUint64(info[btrfsQgroupInfoRferOffset:], 12345)
	item(0, btrfsQgroupInfoKey+2, 257, make([]byte, 40)) // a limit item
	item(0, btrfsQgroupInfoKey, 257, info)
	if rfer, ok := qgroupRfer(buf, 2, 257); !ok || rfer != 12345 {
		t.Errorf("qgroupRfer = %d, %v; want 12345", rfer, ok)
	}
	if _, ok := qgroupRfer(buf, 2, 258); ok {
		t.Error("found a qgroup that is not in the result")
	}
	if _, ok := qgroupRfer(buf[:50], 2, 257); ok {
		t.Error("read past a truncated result")
	}
}
