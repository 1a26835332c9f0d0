package driver

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"

	"golang.org/x/sys/unix"
)

// Copying the data of a volume for a clone (clone.go), where the backend
// has no snapshot of its own: a file (image and block volumes) or a tree
// (directory volumes).
//
// A file is reflinked (FICLONE) where the file system shares extents
// (btrfs, xfs with reflink, bcachefs): O(1) in data, and the two files
// part ways block by block as either is written. Elsewhere it is copied
// range by range of data (SEEK_DATA/SEEK_HOLE) with copy_file_range, so
// holes stay holes: a sparse 10 GiB image holding 100 MiB costs 100 MiB.

// copyFile copies the regular file open for reading at sfd to the new
// regular file open for writing at dfd, and leaves the copy at least size
// bytes long. It does not sync the copy.
func copyFile(sfd, dfd int, size int64) error {
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return err
	}
	if err := unix.IoctlFileClone(dfd, sfd); err != nil {
		if err := sparseCopy(sfd, dfd); err != nil {
			return err
		}
	}
	if err := unix.Ftruncate(dfd, max(size, st.Size)); err != nil {
		return fmt.Errorf("sizing the copy to %d bytes: %w", max(size, st.Size), err)
	}
	return nil
}

// sparseCopy copies the data ranges of sfd to the same offsets of dfd.
func sparseCopy(sfd, dfd int) error {
	var off int64
	for {
		start, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // no data past off
		}
		if err != nil {
			return fmt.Errorf("finding data (SEEK_DATA): %w", err)
		}
		end, err := unix.Seek(sfd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("finding a hole (SEEK_HOLE): %w", err)
		}
		if err := copyRange(sfd, dfd, start, end); err != nil {
			return err
		}
		off = end
	}
}

// copyRange copies bytes [start, end) of sfd to the same offsets of dfd:
// copy_file_range (in the kernel, a reflink where it can), else read and
// write.
func copyRange(sfd, dfd int, start, end int64) error {
	roff, woff := start, start
	for roff < end {
		n, err := unix.CopyFileRange(sfd, &roff, dfd, &woff, int(min(end-roff, 1<<30)), 0)
		switch {
		case errors.Is(err, unix.EXDEV), errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS),
			errors.Is(err, unix.EOPNOTSUPP):
			return readWrite(sfd, dfd, roff, end)
		case err != nil:
			return fmt.Errorf("copying bytes %d-%d (copy_file_range): %w", roff, end, err)
		case n == 0:
			return fmt.Errorf("copying bytes %d-%d: %w", roff, end, io.ErrUnexpectedEOF)
		}
	}
	return nil
}

func readWrite(sfd, dfd int, off, end int64) error {
	buf := make([]byte, 1<<20)
	for off < end {
		n, err := unix.Pread(sfd, buf[:min(int64(len(buf)), end-off)], off)
		if err != nil {
			return fmt.Errorf("reading at %d: %w", off, err)
		}
		if n == 0 {
			return fmt.Errorf("reading at %d: %w", off, io.ErrUnexpectedEOF)
		}
		if _, err := unix.Pwrite(dfd, buf[:n], off); err != nil {
			return fmt.Errorf("writing at %d: %w", off, err)
		}
		off += int64(n)
	}
	return nil
}

// copyTree copies what the directory src holds into the empty directory
// dst, as cp -a does, and gives dst src's owner, mode, extended attributes
// and times:
//   - regular files with copyFile (reflinked or sparse-copied);
//   - symbolic links as links (never followed), with their owner and times;
//   - device nodes, FIFOs and sockets made again with mknod;
//   - hard links within the tree kept as hard links;
//   - owner, mode (set-ID bits too), extended attributes (so ACLs) of
//     files and directories, and times of all.
//
// Every name is opened relative to its parent's file descriptor without
// following symbolic links, so a pod that swaps a directory for a link
// while the copy runs cannot make it read or write outside the two trees.
// A tree in use is copied as it is found, file by file: not at one point
// in time.
func copyTree(src, dst string) error {
	sfd, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", src, err)
	}
	defer unix.Close(sfd)
	dfd, err := unix.Open(dst, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", dst, err)
	}
	defer unix.Close(dfd)
	c := treeCopy{dstRoot: dfd, links: map[[2]uint64]string{}}
	if err := c.dir(sfd, dfd, ""); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return err
	}
	if err := copyAttrs(sfd, dfd, &st); err != nil {
		return fmt.Errorf("%s: %w", dst, err)
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, dst, times(&st), unix.AT_SYMLINK_NOFOLLOW)
}

type treeCopy struct {
	dstRoot int
	// links maps the device and inode of a file with more than one link
	// to its first copy's path, relative to dstRoot.
	links map[[2]uint64]string
}

// dir copies the entries of the open directory sfd into dfd; rel is dfd's
// path below the tree's top.
func (c *treeCopy) dir(sfd, dfd int, rel string) error {
	names, err := readNames(sfd)
	if err != nil {
		return fmt.Errorf("listing %s: %w", "/"+rel, err)
	}
	for _, name := range names {
		if err := c.entry(sfd, dfd, name, path.Join(rel, name)); err != nil {
			return fmt.Errorf("copying %s: %w", "/"+path.Join(rel, name), err)
		}
	}
	return nil
}

func (c *treeCopy) entry(sfd, dfd int, name, rel string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(sfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	kind := st.Mode & unix.S_IFMT
	if kind != unix.S_IFDIR && st.Nlink > 1 {
		key := [2]uint64{st.Dev, st.Ino}
		if first, ok := c.links[key]; ok {
			return unix.Linkat(c.dstRoot, first, dfd, name, 0)
		}
		c.links[key] = rel
	}
	switch kind {
	case unix.S_IFDIR:
		if err := unix.Mkdirat(dfd, name, 0o700); err != nil {
			return err
		}
		err := withPair(sfd, dfd, name, unix.O_RDONLY|unix.O_DIRECTORY, unix.O_RDONLY|unix.O_DIRECTORY, func(s, d int) error {
			if err := c.dir(s, d, rel); err != nil {
				return err
			}
			return copyAttrs(s, d, &st)
		})
		if err != nil {
			return err
		}
	case unix.S_IFREG:
		err := withPair(sfd, dfd, name, unix.O_RDONLY, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, func(s, d int) error {
			if err := copyFile(s, d, 0); err != nil {
				return err
			}
			return copyAttrs(s, d, &st)
		})
		if err != nil {
			return err
		}
	case unix.S_IFLNK:
		buf := make([]byte, st.Size+1)
		n, err := unix.Readlinkat(sfd, name, buf)
		if err != nil {
			return err
		}
		if n > int(st.Size) {
			return errors.New("symbolic link changed while being copied")
		}
		if err := unix.Symlinkat(string(buf[:n]), dfd, name); err != nil {
			return err
		}
		if err := unix.Fchownat(dfd, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	default: // device nodes, FIFOs, sockets
		if err := unix.Mknodat(dfd, name, st.Mode, int(st.Rdev)); err != nil {
			return err
		}
		if err := unix.Fchownat(dfd, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		if err := unix.Fchmodat(dfd, name, st.Mode&0o7777, 0); err != nil {
			return err
		}
	}
	return unix.UtimesNanoAt(dfd, name, times(&st), unix.AT_SYMLINK_NOFOLLOW)
}

// withPair opens name in sfd and in dfd, neither followed if a symbolic
// link, and calls fn with the two descriptors, which it closes after.
func withPair(sfd, dfd int, name string, sflags, dflags int, fn func(s, d int) error) error {
	const common = unix.O_NOFOLLOW | unix.O_CLOEXEC
	s, err := unix.Openat(sfd, name, sflags|common, 0)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	d, err := unix.Openat(dfd, name, dflags|common, 0o600)
	if err != nil {
		return err
	}
	defer unix.Close(d)
	return fn(s, d)
}

// copyAttrs gives the open file d the owner, mode and extended attributes
// of st and the open file s. The owner goes first: chown clears set-ID
// bits.
func copyAttrs(s, d int, st *unix.Stat_t) error {
	if err := unix.Fchown(d, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if err := unix.Fchmod(d, st.Mode&0o7777); err != nil {
		return err
	}
	return copyXattrs(s, d)
}

func copyXattrs(s, d int) error {
	size, err := unix.Flistxattr(s, nil)
	if errors.Is(err, unix.EOPNOTSUPP) || err == nil && size == 0 {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing extended attributes: %w", err)
	}
	list := make([]byte, size)
	if size, err = unix.Flistxattr(s, list); err != nil {
		return fmt.Errorf("listing extended attributes: %w", err)
	}
	for _, name := range splitNul(list[:size]) {
		n, err := unix.Fgetxattr(s, name, nil)
		if err != nil {
			return fmt.Errorf("reading extended attribute %s: %w", name, err)
		}
		val := make([]byte, n)
		if n, err = unix.Fgetxattr(s, name, val); err != nil {
			return fmt.Errorf("reading extended attribute %s: %w", name, err)
		}
		if err := unix.Fsetxattr(d, name, val[:n], 0); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("setting extended attribute %s: %w", name, err)
		}
	}
	return nil
}

func splitNul(b []byte) []string {
	var out []string
	for len(b) > 0 {
		i := 0
		for i < len(b) && b[i] != 0 {
			i++
		}
		if i > 0 {
			out = append(out, string(b[:i]))
		}
		b = b[min(i+1, len(b)):]
	}
	return out
}

func times(st *unix.Stat_t) []unix.Timespec { return []unix.Timespec{st.Atim, st.Mtim} }

// readNames lists the entries of the open directory fd, leaving fd open.
func readNames(fd int) ([]string, error) {
	dup, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), ".")
	defer f.Close()
	return f.Readdirnames(-1)
}
