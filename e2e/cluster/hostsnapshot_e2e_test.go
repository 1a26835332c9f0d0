//go:build e2e

package cluster_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// hostSnapshot is what the host looks like in the ways a cluster changes it,
// each aspect ("link", "iptables rule", ...) a sorted list of items.
type hostSnapshot map[string][]string

// ourPaths are where the cluster mounts things. Mounts elsewhere belong to
// other users of the machine and are left out of the comparison.
var ourPaths = []string{"/var/lib/kubelet", "/var/lib/stickyvol", "/var/lib/cni", "/run/containerd",
	"/var/log", "/run/netns", "/sys/fs/cgroup"}

// checkedSysctls are the sysctls a cluster changes while it runs; this list
// is the test's own, not the package's, so that it checks the package.
var checkedSysctls = []string{
	"net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables", "net.ipv4.conf.all.route_localnet",
	"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
	"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",
}

func snapshotHost(t *testing.T, clusterDir string) hostSnapshot {
	t.Helper()
	s := hostSnapshot{}
	entries, _ := os.ReadDir("/sys/class/net")
	for _, e := range entries {
		s["link"] = append(s["link"], e.Name())
	}
	out, err := exec.Command("ip", "-o", "addr", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 4 {
			s["address"] = append(s["address"], f[1]+" "+f[3])
		}
	}
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(cmd).Output()
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		s["iptables rule"] = append(s["iptables rule"], iptablesRules(cmd, out)...)
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mountinfo), "\n") {
		if f := strings.Fields(line); len(f) > 4 && underAny(f[4], append(ourPaths, clusterDir)) {
			s["mount"] = append(s["mount"], f[4])
		}
	}
	for _, pattern := range []string{"/sys/fs/cgroup/*", "/sys/fs/cgroup/*/*"} {
		dirs, _ := filepath.Glob(pattern)
		for _, d := range dirs {
			if st, err := os.Stat(d); err == nil && st.IsDir() {
				s["cgroup"] = append(s["cgroup"], d)
			}
		}
	}
	for _, k := range checkedSysctls {
		if b, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))); err == nil {
			s["sysctl"] = append(s["sysctl"], k+"="+strings.TrimSpace(string(b)))
		}
	}
	for _, d := range []string{"/var/lib/kubelet", "/var/lib/stickyvol", "/var/lib/cni", "/run/containerd"} {
		if _, err := os.Stat(d); err == nil {
			s["host directory"] = append(s["host directory"], d)
		}
	}
	s["process"] = clusterProcesses(clusterDir)
	for k := range s {
		slices.Sort(s[k])
	}
	return s
}

// iptablesRules returns the rules and user chains of iptables-save output.
// Built-in chains are left out: the first iptables command on a machine
// that never ran one creates the empty built-in tables, with no effect.
func iptablesRules(cmd string, save []byte) []string {
	var rules []string
	table := ""
	for _, line := range strings.Split(string(save), "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, "-A "):
			rules = append(rules, cmd+" "+table+" "+line)
		case strings.HasPrefix(line, ":"):
			if f := strings.Fields(line); len(f) >= 2 && f[1] == "-" {
				rules = append(rules, cmd+" "+table+" chain "+f[0][1:])
			}
		}
	}
	return rules
}

// clusterProcesses lists the processes tied to the cluster directory: by
// the environment marker every cluster process carries, or a command line
// naming the directory.
func clusterProcesses(clusterDir string) []string {
	var procs []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(env, []byte("STICKYVOL_CLUSTER_DIR=")) || bytes.Contains(cmdline, []byte(clusterDir)) {
			procs = append(procs, fmt.Sprintf("%d %s", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		}
	}
	return procs
}

func underAny(path string, dirs []string) bool {
	for _, d := range dirs {
		if path == d || strings.HasPrefix(path, d+"/") {
			return true
		}
	}
	return false
}

// diff lists what changed from s to after, one line per item.
func (s hostSnapshot) diff(after hostSnapshot) []string {
	var out []string
	for _, aspect := range []string{"link", "address", "iptables rule", "mount", "cgroup", "sysctl", "host directory", "process"} {
		for _, item := range after[aspect] {
			if !slices.Contains(s[aspect], item) {
				out = append(out, fmt.Sprintf("new %s: %s", aspect, item))
			}
		}
		for _, item := range s[aspect] {
			if !slices.Contains(after[aspect], item) {
				out = append(out, fmt.Sprintf("%s gone: %s", aspect, item))
			}
		}
	}
	return out
}
