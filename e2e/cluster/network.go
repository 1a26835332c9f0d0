package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"k8s.io/klog/v2"
)

// ruleComment marks the iptables rules the cluster inserts.
const ruleComment = namePrefix + "cluster"

// forwardRule lets pods on different node bridges reach each other when the
// FORWARD policy is DROP (as Docker leaves it). With br_netfilter loaded,
// traffic between pods on the same bridge crosses FORWARD as well.
var forwardRule = []string{"FORWARD", "-s", podNetwork, "-d", podNetwork,
	"-m", "comment", "--comment", ruleComment, "-j", "ACCEPT"}

// ourLink matches the names of the links the cluster makes, so that Down
// finds them even without a state file.
var ourLink = regexp.MustCompile(`^` + namePrefix + `(api|n[0-9]+)$`)

// savedSysctls are the sysctls the cluster or its components may change:
// ip_forward (node bridges, the CNI bridge plugin), bridge-nf-call-iptables
// (kube-proxy needs it for hairpin traffic), route_localnet (kube-proxy with
// localhost node ports, off here), the kernel tunables kubelet sets in
// setupKernelTunables (pkg/kubelet/cm/container_manager_linux.go), and the
// conntrack settings kube-proxy would change were its conntrack options not
// zero. Down restores the values they had before Up.
var savedSysctls = []string{
	"net.ipv4.ip_forward",
	"net.bridge.bridge-nf-call-iptables",
	"net.ipv4.conf.all.route_localnet",
	"vm.overcommit_memory",
	"vm.panic_on_oom",
	"kernel.panic",
	"kernel.panic_on_oops",
	"kernel.keys.root_maxkeys",
	"kernel.keys.root_maxbytes",
	"net.netfilter.nf_conntrack_max",
	"net.netfilter.nf_conntrack_tcp_timeout_established",
	"net.netfilter.nf_conntrack_tcp_timeout_close_wait",
	"net.netfilter.nf_conntrack_tcp_be_liberal",
}

// run runs a command and returns its output; the error carries the output.
func run(ctx context.Context, argv ...string) ([]byte, error) {
	klog.FromContext(ctx).V(4).Info("Running", "argv", argv)
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

func linkExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

// addBridge creates a bridge with the given addresses and brings it up.
func (c *Cluster) addBridge(ctx context.Context, name string, cidrs ...string) error {
	if linkExists(name) {
		return fmt.Errorf("link %s already exists and is not this cluster's; remove it with `ip link del %s`", name, name)
	}
	if err := c.update(func(st *state) { st.Links = appendUnique(st.Links, name) }); err != nil {
		return err
	}
	if _, err := run(ctx, "ip", "link", "add", name, "type", "bridge"); err != nil {
		return err
	}
	for _, cidr := range cidrs {
		if _, err := run(ctx, "ip", "addr", "add", cidr, "dev", name); err != nil {
			return err
		}
	}
	_, err := run(ctx, "ip", "link", "set", name, "up")
	return err
}

// deleteLinks deletes the given links, the ports of those that are bridges,
// and any other link named like the cluster's.
func deleteLinks(ctx context.Context, names []string) error {
	entries, _ := os.ReadDir("/sys/class/net")
	for _, e := range entries {
		if ourLink.MatchString(e.Name()) {
			names = appendUnique(names, e.Name())
		}
	}
	var errs []error
	del := func(name string) {
		if _, err := run(ctx, "ip", "link", "del", name); err != nil && linkExists(name) {
			errs = append(errs, err)
		}
	}
	for _, name := range names {
		if !linkExists(name) {
			continue
		}
		// A pod's veth pair goes when the kernel destroys the pod's network
		// namespace, which it does in the background, seconds after the
		// node's last process is gone. Deleting the host end of a bridge
		// port deletes the pair now.
		ports, _ := os.ReadDir(filepath.Join("/sys/class/net", name, "brif"))
		for _, p := range ports {
			del(p.Name())
		}
		del(name)
	}
	return errors.Join(errs...)
}

// insertRule inserts an iptables rule at the top of its chain.
func (c *Cluster) insertRule(ctx context.Context, rule []string) error {
	if err := c.update(func(st *state) { st.Rules = append(st.Rules, rule) }); err != nil {
		return err
	}
	_, err := run(ctx, append([]string{"iptables", "-w", "-I"}, rule...)...)
	return err
}

// deleteRules deletes every copy of the given iptables rules.
func deleteRules(ctx context.Context, rules [][]string) error {
	var errs []error
	for _, rule := range rules {
		for range 100 {
			if _, err := run(ctx, append([]string{"iptables", "-w", "-C"}, rule...)...); err != nil {
				break // no such rule (left)
			}
			if _, err := run(ctx, append([]string{"iptables", "-w", "-D"}, rule...)...); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	return errors.Join(errs...)
}

func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

// readSysctls returns the current value of each key that exists.
func readSysctls(keys []string) map[string]string {
	vals := map[string]string{}
	for _, k := range keys {
		if b, err := os.ReadFile(sysctlPath(k)); err == nil {
			vals[k] = strings.TrimSpace(string(b))
		}
	}
	return vals
}

func writeSysctl(key, val string) error {
	return os.WriteFile(sysctlPath(key), []byte(val), 0o644)
}

// restoreSysctls writes back saved values that changed.
func restoreSysctls(saved map[string]string) error {
	now := readSysctls(slices.Collect(mapKeys(saved)))
	var errs []error
	for k, v := range saved {
		if cur, ok := now[k]; ok && cur != v {
			if err := writeSysctl(k, v); err != nil {
				errs = append(errs, fmt.Errorf("restoring sysctl %s=%s: %w", k, v, err))
			}
		}
	}
	return errors.Join(errs...)
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// iptablesCommands are the two families kube-proxy programs.
var iptablesCommands = []string{"iptables", "ip6tables"}

// kubeChains lists, per "<command>/<table>", the chains whose name starts
// with KUBE-. Families the kernel does not support are skipped.
func kubeChains(ctx context.Context) map[string][]string {
	chains := map[string][]string{}
	for _, cmd := range iptablesCommands {
		out, err := run(ctx, cmd+"-save")
		if err != nil {
			continue
		}
		table := ""
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "*"):
				table = line[1:]
			case strings.HasPrefix(line, ":KUBE-"):
				name, _, _ := strings.Cut(line[1:], " ")
				chains[cmd+"/"+table] = append(chains[cmd+"/"+table], name)
			}
		}
	}
	return chains
}

// removeKubeChains removes the KUBE-* chains that are not in keep, and the
// rules of other chains that jump to them. kube-proxy --cleanup removes its
// own chains but leaves KUBE-FIREWALL and a few canaries behind.
func removeKubeChains(ctx context.Context, keep map[string][]string) error {
	var errs []error
	for key, chains := range kubeChains(ctx) {
		cmd, table, _ := strings.Cut(key, "/")
		var gone []string
		for _, ch := range chains {
			if !slices.Contains(keep[key], ch) {
				gone = append(gone, ch)
			}
		}
		if len(gone) == 0 {
			continue
		}
		out, err := run(ctx, cmd, "-w", "-t", table, "-S")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rule := range strings.Split(string(out), "\n") {
			f := splitRule(rule)
			if len(f) < 2 || f[0] != "-A" || slices.Contains(gone, f[1]) || !jumpsToAny(f, gone) {
				continue
			}
			f[0] = "-D"
			if _, err := run(ctx, append([]string{cmd, "-w", "-t", table}, f...)...); err != nil {
				errs = append(errs, err)
			}
		}
		for _, op := range []string{"-F", "-X"} {
			for _, ch := range gone {
				if _, err := run(ctx, cmd, "-w", "-t", table, op, ch); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// splitRule splits a line of `iptables -S` into arguments. iptables quotes
// arguments that hold spaces ("kubernetes service portals") with double
// quotes and escapes quotes inside them with a backslash.
func splitRule(line string) []string {
	var args []string
	var cur strings.Builder
	inQuote, inArg := false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case ch == '\\' && inQuote && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case ch == '"':
			inQuote, inArg = !inQuote, true
		case ch == ' ' && !inQuote:
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(ch)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args
}

func jumpsToAny(rule, chains []string) bool {
	for i := 0; i+1 < len(rule); i++ {
		if (rule[i] == "-j" || rule[i] == "-g") && slices.Contains(chains, rule[i+1]) {
			return true
		}
	}
	return false
}

// hostMountPoints are the paths each node sees bound from its own directory.
// They must exist on the host as mount points; the ones that do not are
// created (empty) and recorded, and Down removes them.
var hostMountPoints = []string{"/var/lib/kubelet", "/var/lib/stickyvol", "/var/lib/cni", "/run/containerd"}

func (c *Cluster) ensureHostDirs() error {
	for _, d := range hostMountPoints {
		if _, err := os.Stat(d); err == nil {
			continue
		}
		if err := c.update(func(st *state) { st.HostDirs = appendUnique(st.HostDirs, d) }); err != nil {
			return err
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// removeHostDirs removes the mount points the cluster created. One that is
// not empty any more is in use by something else now (a host containerd
// under /run/containerd) and stays.
func removeHostDirs(ctx context.Context, dirs []string) error {
	var errs []error
	for _, d := range dirs {
		err := os.Remove(d)
		switch {
		case err == nil, errors.Is(err, os.ErrNotExist):
		case errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST):
			klog.FromContext(ctx).Info("Leaving a mount point in place: something else uses it now", "path", d)
		default:
			errs = append(errs, fmt.Errorf("host directory %s made by the cluster: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
