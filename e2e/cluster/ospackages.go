package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// osPackages are the Debian packages the nodes need: containerd (1.6 in
// Debian 12) and runc run the pods, the CNI plugins give them a network,
// busybox-static is the busybox image's only binary, iptables is what
// kube-proxy programs, iproute2 makes the bridges, btrfs-progs formats the
// nodes' data roots.
var osPackages = []string{"containerd", "runc", "containernetworking-plugins", "busybox-static", "iptables", "iproute2", "btrfs-progs"}

// cniPlugins are the CNI plugins a node's network config uses.
var cniPlugins = []string{"bridge", "host-local", "loopback", "portmap"}

// cniPluginDirs are where distributions put the CNI plugins: Debian's
// containernetworking-plugins uses /usr/lib/cni, upstream tarballs /opt/cni/bin.
var cniPluginDirs = []string{"/usr/lib/cni", "/opt/cni/bin"}

// policyRCD is Debian's hook that may forbid package scripts to start
// services. While it exits 101, installing containerd does not start a
// system-wide containerd (with systemd running, its postinst would): the
// cluster runs one containerd per node and wants no other.
const (
	policyRCD       = "/usr/sbin/policy-rc.d"
	policyRCDScript = "#!/bin/sh\n# Written by stickyvol's local cluster while it installs packages.\nexit 101\n"
)

// EnsureOSPackages installs those of the nodes' Debian packages (containerd,
// runc, containernetworking-plugins, busybox-static, iptables, iproute2)
// that are missing, with one `apt-get update` and one `apt-get install`,
// without starting any service. It fails with a message that says what to
// install when it cannot: not root, or no apt-get.
func EnsureOSPackages(ctx context.Context, out io.Writer) error {
	missing, err := missingPackages(ctx, osPackages)
	if err != nil {
		return err
	}
	if len(missing) == 0 {
		return nil
	}
	install := "apt-get install " + strings.Join(missing, " ")
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("the local cluster needs the Debian packages %s and this machine has no apt-get: install their equivalents (containerd 1.6 or later, runc, the CNI plugins %s in one of %s, a static busybox at /bin/busybox, iptables, iproute2)",
			strings.Join(missing, ", "), strings.Join(cniPlugins, ", "), strings.Join(cniPluginDirs, " or "))
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("the local cluster needs the Debian packages %s; install them as root: %s", strings.Join(missing, ", "), install)
	}

	fmt.Fprintf(out, "installing OS packages: %s ...\n", strings.Join(missing, " "))
	start := time.Now()
	restore, err := forbidServiceStarts()
	if err != nil {
		return err
	}
	defer restore()
	for _, args := range [][]string{
		{"update", "-q"},
		append([]string{"install", "-y", "-q", "--no-install-recommends"}, missing...),
	} {
		if err := aptGet(ctx, args...); err != nil {
			return fmt.Errorf("%s failed (is the Debian mirror reachable?): %w", install, err)
		}
	}
	still, err := missingPackages(ctx, missing)
	if err != nil {
		return fmt.Errorf("after %s: %w", install, err)
	}
	if len(still) > 0 {
		return fmt.Errorf("after %s, still missing %v", install, still)
	}
	fmt.Fprintf(out, "installed OS packages in %s\n", time.Since(start).Round(time.Second))
	return nil
}

// CNIPluginDir returns the directory holding the CNI plugins the nodes use
// (the bin_dir of containerd's CRI plugin).
func CNIPluginDir() (string, error) {
	for _, dir := range cniPluginDirs {
		if hasAll(dir, cniPlugins) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("no directory among %s holds the CNI plugins %s: install containernetworking-plugins",
		strings.Join(cniPluginDirs, ", "), strings.Join(cniPlugins, ", "))
}

func hasAll(dir string, names []string) bool {
	for _, n := range names {
		if !IsExecutable(filepath.Join(dir, n)) {
			return false
		}
	}
	return true
}

// missingPackages returns those of pkgs that dpkg does not list as installed.
func missingPackages(ctx context.Context, pkgs []string) ([]string, error) {
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		return nil, fmt.Errorf("the local cluster installs its OS packages (%s) with Debian's tools and this machine has no dpkg-query", strings.Join(pkgs, ", "))
	}
	// dpkg-query exits 1 when a package is unknown to it, after printing
	// the ones it knows: the output is what counts.
	var stdout bytes.Buffer
	cmd := exec.CommandContext(ctx, "dpkg-query", append([]string{"-W", "-f", "${Package} ${db:Status-Abbrev}\n"}, pkgs...)...)
	cmd.Stdout = &stdout
	var exitErr *exec.ExitError
	if err := cmd.Run(); err != nil && !errors.As(err, &exitErr) {
		return nil, fmt.Errorf("dpkg-query: %w", err)
	}
	return notInstalled(pkgs, stdout.String()), nil
}

// notInstalled parses `dpkg-query -W -f '${Package} ${db:Status-Abbrev}\n'`
// output: "ii" means wanted and installed; anything else ("rc": removed with
// its config files left, "iU": unpacked only) or no line at all is missing.
func notInstalled(pkgs []string, dpkgOutput string) []string {
	installed := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(dpkgOutput))
	for sc.Scan() {
		name, status, _ := strings.Cut(sc.Text(), " ")
		if strings.HasPrefix(status, "ii") {
			installed[name] = true
		}
	}
	var missing []string
	for _, p := range pkgs {
		if !installed[p] {
			missing = append(missing, p)
		}
	}
	return missing
}

func aptGet(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "apt-get", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	klog.FromContext(ctx).V(2).Info("Running apt-get", "args", args)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("apt-get %s: %w\n%s", args[0], err, lastLines(output.String(), 20))
	}
	return nil
}

// forbidServiceStarts installs a policy-rc.d that forbids starting services,
// unless the machine already has one (which is then respected as it is). The
// returned func removes what it installed.
func forbidServiceStarts() (func(), error) {
	f, err := os.OpenFile(policyRCD, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if errors.Is(err, os.ErrExist) {
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("forbidding service starts during the install: %w", err)
	}
	_, err = f.WriteString(policyRCDScript)
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		os.Remove(policyRCD)
		return nil, err
	}
	return func() { os.Remove(policyRCD) }, nil
}
