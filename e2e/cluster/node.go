package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Node is a real node of the cluster.
type Node struct {
	Name string
	// IP is the node's InternalIP, the gateway of its pod bridge.
	IP string
	// DataDir is the host directory the node sees as /var/lib/stickyvol.
	DataDir string
	// KubeletDir is the host directory the node sees as /var/lib/kubelet.
	KubeletDir string
}

// Nodes returns the cluster's real nodes (not the kwok ones).
func (c *Cluster) Nodes() []Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	nodes := make([]Node, 0, len(c.st.Nodes))
	for _, n := range c.st.Nodes {
		nd := c.nodeDir(n.Name)
		nodes = append(nodes, Node{Name: n.Name, IP: n.IP, DataDir: filepath.Join(nd, "stickyvol"), KubeletDir: filepath.Join(nd, "kubelet")})
	}
	return nodes
}

// Component names of a node's processes. The mount namespace holder is a
// `sleep infinity` started in a new mount namespace: it keeps the namespace
// alive while containerd and kubelet come and go, and gives nsenter a PID to
// enter. Without it, a kubelet restart would need containerd's PID and a
// containerd restart would drop the namespace and every mount in it.
func holderName(node string) string     { return node + "/mountns" }
func containerdName(node string) string { return node + "/containerd" }
func kubeletName(node string) string    { return node + "/kubelet" }

func (c *Cluster) node(name string) (node, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.st.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return node{}, fmt.Errorf("no node %q in this cluster", name)
}

func (c *Cluster) procOf(name string) proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.Procs[name]
}

// Exec runs a command in a node's mount namespace, where /var/lib/kubelet
// and /var/lib/stickyvol are the node's own, and returns its combined output.
func (c *Cluster) Exec(ctx context.Context, node string, argv ...string) ([]byte, error) {
	if _, err := c.node(node); err != nil {
		return nil, err
	}
	holder := c.procOf(holderName(node))
	if !holder.alive() {
		return nil, fmt.Errorf("node %s is not running", node)
	}
	return run(ctx, append([]string{c.tools.nsenter, "-t", strconv.Itoa(holder.PID), "-m", "--"}, argv...)...)
}

// startNode starts a node: its mount namespace with the node's directories
// bound in, its containerd with the cluster's images, and its kubelet.
func (c *Cluster) startNode(ctx context.Context, n node) error {
	nd := c.nodeDir(n.Name)
	holder, err := c.start(ctx, procSpec{name: holderName(n.Name), argv: []string{c.tools.sleep, "infinity"}, newMountNS: true})
	if err != nil {
		return err
	}
	for _, b := range nodeBinds {
		if _, err := c.Exec(ctx, n.Name, "mount", "--bind", filepath.Join(nd, b.src), b.dst); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	// Mounts kubelet and CSI drivers make under /var/lib/kubelet must reach
	// the containers that use them, and a driver container's Bidirectional
	// mounts must come back: the node's kubelet directory is a shared mount,
	// as on a real node. The host never sees them: the namespace's root is
	// private.
	if _, err := c.Exec(ctx, n.Name, "mount", "--make-rshared", "/var/lib/kubelet"); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	if _, err := c.start(ctx, procSpec{
		name: containerdName(n.Name),
		argv: []string{c.tools.containerd, "--config", filepath.Join(nd, "containerd.toml")},
		nsOf: holder.PID,
	}); err != nil {
		return err
	}
	if err := c.waitContainerd(ctx, n.Name); err != nil {
		return err
	}
	if err := c.importImages(ctx, n.Name, c.st.Images); err != nil {
		return err
	}
	return c.startKubelet(ctx, n)
}

func (c *Cluster) waitContainerd(ctx context.Context, name string) error {
	return c.poll(ctx, containerdName(name), 30*time.Second, func(ctx context.Context) (bool, error) {
		_, err := run(ctx, c.tools.ctr, "--address", c.containerdSocket(name), "version")
		return err == nil, err
	})
}

func (c *Cluster) startKubelet(ctx context.Context, n node) error {
	_, err := c.start(ctx, procSpec{
		name: kubeletName(n.Name),
		argv: []string{
			c.st.Binaries.Kubelet,
			"--config=" + filepath.Join(c.nodeDir(n.Name), "kubelet.yaml"),
			"--kubeconfig=" + c.kubeconfigPath("kubelet-"+n.Name),
			"--hostname-override=" + n.Name,
			"--node-ip=" + n.IP,
			// Unused while the config names a serving certificate; set so
			// that kubelet never writes certificates anywhere else.
			"--cert-dir=" + filepath.Join(c.nodeDir(n.Name), "kubelet-pki"),
			"--v=2",
		},
		nsOf: c.procOf(holderName(n.Name)).PID,
	})
	if err != nil {
		return err
	}
	url := "http://" + net.JoinHostPort(n.IP, strconv.Itoa(n.HealthzPort)) + "/healthz"
	return c.poll(ctx, kubeletName(n.Name), time.Minute, func(ctx context.Context) (bool, error) {
		return httpOK(ctx, url), nil
	})
}

// stopNode stops a node's kubelet, its pods, containerd, containerd's shims
// and the mount namespace holder. With its last process gone, the mount
// namespace and every mount in it (pod volumes, bind mounts, overlay
// snapshots, network namespace files) go away with it.
func (c *Cluster) stopNode(ctx context.Context, n node) error {
	c.mu.Lock()
	procs := c.st.Procs
	kubelet, containerd, holder := procs[kubeletName(n.Name)], procs[containerdName(n.Name)], procs[holderName(n.Name)]
	c.mu.Unlock()
	var errs []error
	// kubelet leaves pods running when it stops.
	errs = append(errs, stopProcs(ctx, map[string]proc{kubeletName(n.Name): kubelet}, 10*time.Second))
	errs = append(errs, killCgroups(nodeCgroups(n.CgroupRoot)))
	errs = append(errs, stopProcs(ctx, map[string]proc{containerdName(n.Name): containerd}, 10*time.Second))
	// Shims outlive containerd; they are this node's if they serve its
	// socket.
	shims := map[string]proc{}
	for name, p := range markedProcs(c.dir) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
		if strings.Contains(string(cmdline), "\x00"+c.containerdSocket(n.Name)+"\x00") {
			shims[name] = p
		}
	}
	errs = append(errs, stopProcs(ctx, shims, 5*time.Second))
	errs = append(errs, stopProcs(ctx, map[string]proc{holderName(n.Name): holder}, 5*time.Second))
	return errors.Join(errs...)
}

// RestartKubelet stops a node's kubelet and starts it again in the node's
// mount namespace. Pods keep running and mounts stay, as when kubelet
// restarts on a real node.
func (c *Cluster) RestartKubelet(ctx context.Context, name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	if err := stopProcs(ctx, map[string]proc{kubeletName(name): c.procOf(kubeletName(name))}, 10*time.Second); err != nil {
		return err
	}
	if err := c.startKubelet(ctx, n); err != nil {
		c.PrintLogTails(c.out, 20)
		return fmt.Errorf("restarting kubelet on %s: %w", name, err)
	}
	return nil
}

// RestartNode restarts a whole node as a reboot would: every container, the
// kubelet, containerd and the node's mount namespace stop; /var/lib/kubelet,
// /var/lib/stickyvol and containerd's images stay; runtime state (/run, the
// IPAM allocations) starts afresh. It returns once the kubelet is healthy
// again.
func (c *Cluster) RestartNode(ctx context.Context, name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	if err := c.stopNode(ctx, n); err != nil {
		return fmt.Errorf("stopping node %s: %w", name, err)
	}
	nd := c.nodeDir(name)
	for _, d := range []string{"containerd/state", "run", "run-containerd", "cni"} {
		if err := os.RemoveAll(filepath.Join(nd, d)); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(nd, d), 0o755); err != nil {
			return err
		}
	}
	if err := c.startNode(ctx, n); err != nil {
		c.PrintLogTails(c.out, 20)
		return fmt.Errorf("restarting node %s: %w", name, err)
	}
	return nil
}

// WriteStaticPod writes a static pod manifest for a node's kubelet,
// atomically: kubelet may read a half-written file and act on it.
func (c *Cluster) WriteStaticPod(node, fileName string, manifest []byte) error {
	if _, err := c.node(node); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(c.nodeDir(node), "manifests", fileName), manifest, 0o644)
}

// httpOK reports whether a GET of url answers 200.
func httpOK(ctx context.Context, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
