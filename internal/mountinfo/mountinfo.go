// Package mountinfo reads the kernel's mount table, /proc/<pid>/mountinfo
// (proc(5)), for the driver and for the local cluster's teardown.
package mountinfo

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Mount is one line of the table.
type Mount struct {
	// MountPoint is the mount's path, with the kernel's octal escapes
	// (\040 for a space, \011 tab, \012 newline, \134 backslash) undone.
	MountPoint string
	// FSType is the file system type, e.g. "ext4" or "cgroup2".
	FSType string
}

// Read parses /proc/self/mountinfo, the mounts of this process's mount
// namespace, in the kernel's order (a mount after the ones it sits on).
func Read() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	return Parse(f)
}

// Parse parses a mountinfo table. A line reads
//
//	id parent major:minor root mount-point options [optional...] - fstype source super-options
//
// where the optional fields vary in number, so the type is found after the
// "-" separator rather than at a fixed position.
func Parse(r io.Reader) ([]Mount, error) {
	var mounts []Mount
	sc := bufio.NewScanner(r)
	// A line holds two paths of up to PATH_MAX each, escaped.
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 5 || sep+1 >= len(fields) {
			return nil, fmt.Errorf("malformed mountinfo line %q", sc.Text())
		}
		mounts = append(mounts, Mount{MountPoint: unescape(fields[4]), FSType: fields[sep+1]})
	}
	return mounts, sc.Err()
}

// unescape undoes the kernel's three-digit octal escapes.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
