package driver

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// freeBytes is the space an unprivileged user may still write on the file
// system holding p (statfs f_bavail).
func freeBytes(p string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", p, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// measureDir walks a volume directory: its UsedBytes are the allocated
// blocks of everything in the tree, like du, its UsedInodes the files,
// directories and links in it. Directory volumes share the data root's
// file system and have no quota, so statfs alone only knows about the
// whole file system; the walk is what tells one volume's use from
// another's. It costs
// O(number of files) per call, like kubelet's own du for emptyDir; kubelet
// asks for volume stats about once a minute per volume. The walk does not
// follow symlinks, does not cross into other file systems, counts a
// hard-linked inode once and skips entries that vanish or cannot be read
// while it runs.
func measureDir(dir string) (volumeUsage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return volumeUsage{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	u := volumeUsage{
		FreeBytes:  int64(st.Bavail) * st.Bsize,
		Inodes:     true,
		FreeInodes: int64(st.Ffree),
	}
	var rootDev uint64
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir {
				return err
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		sys, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		if p == dir {
			rootDev = sys.Dev
		} else if sys.Dev != rootDev {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if sys.Nlink > 1 && !d.IsDir() {
			if seen[sys.Ino] {
				return nil
			}
			seen[sys.Ino] = true
		}
		u.UsedInodes++
		u.UsedBytes += sys.Blocks * 512
		return nil
	})
	if err != nil {
		return volumeUsage{}, fmt.Errorf("measuring %s: %w", dir, err)
	}
	return u, nil
}
