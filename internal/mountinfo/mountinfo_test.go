package mountinfo

import (
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	const table = `22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw
97 27 8:1 /lib/v /var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pv\040one/mount rw - ext4 /dev/sda1 rw
98 27 8:1 / /mnt/tab\011and\134backslash rw master:1 propagate_from:2 - ext4 /dev/sda1 rw
99 27 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
100 27 0:31 / /mnt/trailing\04 rw - tmpfs tmpfs rw
`
	got, err := Parse(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{"/proc", "proc"},
		{"/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pv one/mount", "ext4"},
		{"/mnt/tab\tand\\backslash", "ext4"},
		{"/sys/fs/cgroup/unified", "cgroup2"},
		{`/mnt/trailing\04`, "tmpfs"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("Parse =\n%q\nwant\n%q", got, want)
	}
}

func TestParseRefusesMalformedLines(t *testing.T) {
	for _, line := range []string{"22 27 0:21 / /proc rw", "22 27 0:21 / - proc"} {
		if _, err := Parse(strings.NewReader(line + "\n")); err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", line)
		}
	}
}

func TestReadFindsRoot(t *testing.T) {
	mounts, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(mounts, func(m Mount) bool { return m.MountPoint == "/" }) {
		t.Errorf("Read() has no mount at /: %v", mounts)
	}
}
