package driver

import (
	"slices"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestParseMountFlags(t *testing.T) {
	for _, tc := range []struct {
		flags    []string
		options  []string
		readOnly bool
		code     codes.Code
	}{
		{nil, nil, false, codes.OK},
		{[]string{"rw"}, nil, false, codes.OK},
		{[]string{"ro", "noexec"}, []string{"noexec"}, true, codes.OK},
		{[]string{"noexec", "nosuid", "nodev", "nosuid"}, []string{"nodev", "noexec", "nosuid"}, false, codes.OK},
		{[]string{"nodiratime", "relatime"}, []string{"nodiratime", "relatime"}, false, codes.OK},
		{[]string{"strictatime"}, []string{"strictatime"}, false, codes.OK},
		{[]string{"ro", "rw"}, nil, false, codes.InvalidArgument},
		{[]string{"noatime", "relatime"}, nil, false, codes.InvalidArgument},
		{[]string{"size=1G"}, nil, false, codes.InvalidArgument},
		{[]string{"nosuid,nodev"}, nil, false, codes.InvalidArgument},
		{[]string{"remount"}, nil, false, codes.InvalidArgument},
		{[]string{"suid"}, nil, false, codes.InvalidArgument},
		{[]string{""}, nil, false, codes.InvalidArgument},
	} {
		options, readOnly, err := parseMountFlags(tc.flags)
		if status.Code(err) != tc.code || !slices.Equal(options, tc.options) || readOnly != tc.readOnly {
			t.Errorf("parseMountFlags(%q) = %q, %v, %v; want %q, %v, code %v",
				tc.flags, options, readOnly, err, tc.options, tc.readOnly, tc.code)
		}
	}
}

func TestFlagsOf(t *testing.T) {
	for _, tc := range []struct {
		target Target
		want   BindFlags
	}{
		{Target{}, 0},
		{Target{ReadOnly: true}, unix.MS_RDONLY},
		{Target{MountOptions: "nodev,noexec,nosuid"}, unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_NOSUID},
		{Target{ReadOnly: true, MountOptions: "noatime"}, unix.MS_RDONLY | unix.MS_NOATIME},
	} {
		if got := flagsOf(tc.target); got != tc.want {
			t.Errorf("flagsOf(%+v) = %#x, want %#x", tc.target, got, tc.want)
		}
	}
}
