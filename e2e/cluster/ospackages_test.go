package cluster

import (
	"slices"
	"testing"
)

func TestNotInstalled(t *testing.T) {
	// As `dpkg-query -W -f '${Package} ${db:Status-Abbrev}\n'` prints it:
	// runc installed, containerd removed with its config left, iptables
	// unpacked but not configured, busybox-static unknown (no line).
	out := "containerd rc \nruncc ii \nrunc ii \niptables iU \n"
	got := notInstalled([]string{"containerd", "runc", "iptables", "busybox-static"}, out)
	if want := []string{"containerd", "iptables", "busybox-static"}; !slices.Equal(got, want) {
		t.Errorf("notInstalled = %q, want %q", got, want)
	}
	if got := notInstalled([]string{"runc"}, out); len(got) != 0 {
		t.Errorf("notInstalled(runc) = %q, want nothing", got)
	}
}
