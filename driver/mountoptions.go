package driver

import (
	"maps"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// BindFlags is a set of per-mount MS_* flags that a bind mount can take
// (MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC and the atime flags). They
// belong to one mount, not to the file system below it, so they can differ
// between the targets of one volume.
type BindFlags uintptr

// bindMountOptions are the mount options (StorageClass mountOptions, CSI
// mount_flags) a published volume accepts besides "ro" and "rw", and the
// flag each one sets. Options of a file system (size=, uid=, mode=) have no
// file system here to go to, and "bind" or propagation options would change
// what the driver mounts, so those are refused.
var bindMountOptions = map[string]BindFlags{
	"nosuid":      unix.MS_NOSUID,
	"nodev":       unix.MS_NODEV,
	"noexec":      unix.MS_NOEXEC,
	"noatime":     unix.MS_NOATIME,
	"nodiratime":  unix.MS_NODIRATIME,
	"relatime":    unix.MS_RELATIME,
	"strictatime": unix.MS_STRICTATIME,
}

// atimeOptions choose how access times are kept; at most one may be given.
var atimeOptions = []string{"noatime", "relatime", "strictatime"}

// atimeFlags are the flags that together say how access times are kept.
const atimeFlags BindFlags = unix.MS_NOATIME | unix.MS_NODIRATIME | unix.MS_RELATIME | unix.MS_STRICTATIME

// acceptedMountOptions lists the accepted options for messages.
func acceptedMountOptions() string {
	return strings.Join(append([]string{"ro", "rw"}, slices.Sorted(maps.Keys(bindMountOptions))...), ", ")
}

// parseMountFlags checks the mount flags of a volume capability. It returns
// the options other than "ro" and "rw", sorted and without duplicates, and
// whether "ro" was given. "rw" is the default and changes nothing; a
// read-only publish request stays read-only with it.
func parseMountFlags(flags []string) (options []string, readOnly bool, err error) {
	var rw bool
	for _, f := range flags {
		switch _, ok := bindMountOptions[f]; {
		case f == "ro":
			readOnly = true
		case f == "rw":
			rw = true
		case ok:
			options = append(options, f)
		default:
			return nil, false, status.Errorf(codes.InvalidArgument,
				"mount option %q is not supported: a hostpath volume is a bind mount of a directory, "+
					"which takes only the options %s", f, acceptedMountOptions())
		}
	}
	slices.Sort(options)
	options = slices.Compact(options)
	if readOnly && rw {
		return nil, false, status.Error(codes.InvalidArgument, `mount options "ro" and "rw" contradict each other`)
	}
	var atime []string
	for _, o := range options {
		if slices.Contains(atimeOptions, o) {
			atime = append(atime, o)
		}
	}
	if len(atime) > 1 {
		return nil, false, status.Errorf(codes.InvalidArgument,
			"mount options %q contradict each other: give at most one of %s", atime, strings.Join(atimeOptions, ", "))
	}
	return options, readOnly, nil
}

// flagsOf returns the flags a target is mounted with: its mount options
// (as recorded, comma-separated) and MS_RDONLY when it is read-only.
func flagsOf(t Target) BindFlags {
	var flags BindFlags
	if t.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	for o := range strings.SplitSeq(t.MountOptions, ",") {
		flags |= bindMountOptions[o]
	}
	return flags
}
