package cluster

import (
	"slices"
	"strings"
	"testing"
)

func TestSplitRule(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []string
	}{
		{"-A INPUT -j KUBE-FIREWALL", []string{"-A", "INPUT", "-j", "KUBE-FIREWALL"}},
		{`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
			[]string{"-A", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"}},
		{`-A X -m comment --comment "say \"hi\"" -j ACCEPT`, []string{"-A", "X", "-m", "comment", "--comment", `say "hi"`, "-j", "ACCEPT"}},
		{`-A X -m comment --comment "" -j ACCEPT`, []string{"-A", "X", "-m", "comment", "--comment", "", "-j", "ACCEPT"}},
	} {
		if got := splitRule(tc.line); !slices.Equal(got, tc.want) {
			t.Errorf("splitRule(%q) = %q, want %q", tc.line, got, tc.want)
		}
	}
}

func TestJumpsToAny(t *testing.T) {
	gone := []string{"KUBE-FIREWALL", "KUBE-SERVICES"}
	for rule, want := range map[string]bool{
		"-A INPUT -j KUBE-FIREWALL":                           true,
		"-A OUTPUT -g KUBE-SERVICES":                          true,
		"-A FORWARD -j ACCEPT":                                false,
		"-A INPUT -m comment --comment KUBE-FIREWALL -j DROP": false,
	} {
		if got := jumpsToAny(strings.Fields(rule), gone); got != want {
			t.Errorf("jumpsToAny(%q) = %v, want %v", rule, got, want)
		}
	}
}

func TestOurNames(t *testing.T) {
	for name, want := range map[string]bool{
		"stickyvol-api": true, "stickyvol-n1": true, "stickyvol-n42": true,
		"stickyvol-nx": false, "stickyvol-api0": false, "br-1": false, "stickyvol-node-1": false,
	} {
		if got := ourLink.MatchString(name); got != want {
			t.Errorf("ourLink(%q) = %v, want %v", name, got, want)
		}
	}
	for name, want := range map[string]bool{"stickyvol-node-1": true, "stickyvol-node-x": false, "kubepods": false} {
		if got := ourCgroup.MatchString(name); got != want {
			t.Errorf("ourCgroup(%q) = %v, want %v", name, got, want)
		}
	}
	for i := 1; i <= maxNodes; i++ {
		if !ourLink.MatchString(nodeBridge(i)) || len(nodeBridge(i)) > 15 {
			t.Errorf("node bridge %q: not matched or longer than IFNAMSIZ-1", nodeBridge(i))
		}
	}
}
