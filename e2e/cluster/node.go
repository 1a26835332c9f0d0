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

// Component names of a node's processes. A node's init is PID 1 of the
// node's own PID namespace, in the node's own mount namespace, as the node
// container's init is on a kind node: /proc in the node is the node's, so
// PID 1 as kubelet, cadvisor and hostPID or hostPath-/ pods see it is the
// node's init, and /proc/1/ns/mnt is the node's mount namespace (upstream's
// storage e2e helper pods enter it to look at the node's mounts). It keeps
// both namespaces alive while containerd and kubelet come and go, gives
// nsenter a PID to enter, and reaps the processes orphaned in the node
// (containerd's shims once their pod is gone) as a node's init must: the
// namespace's orphans are reparented to it, and `sleep` would leave them
// zombies. busybox's ash, blocked in `wait`, reaps every child it gets, its
// own or adopted.
func initName(node string) string       { return node + "/init" }
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

// Exec runs a command in a node's mount and PID namespaces, where
// /var/lib/kubelet, /var/lib/stickyvol and /proc are the node's own, and
// returns its combined output.
func (c *Cluster) Exec(ctx context.Context, node string, argv ...string) ([]byte, error) {
	if _, err := c.node(node); err != nil {
		return nil, err
	}
	initProc := c.procOf(initName(node))
	if !initProc.alive() {
		return nil, fmt.Errorf("node %s is not running", node)
	}
	return run(ctx, c.inNode(initProc.PID, argv)...)
}

// startNode starts a node: its init, in namespaces of its own with the
// node's /proc and directories mounted, its containerd with the cluster's
// images, and its kubelet.
func (c *Cluster) startNode(ctx context.Context, n node) error {
	nd := c.nodeDir(n.Name)
	initProc, err := c.start(ctx, procSpec{
		name:    initName(n.Name),
		argv:    []string{c.tools.busybox, "sh", "-c", "while :; do sleep 3600 & wait; done"},
		newNode: true,
	})
	if err != nil {
		return err
	}
	// A proc mounted from inside the node's PID namespace shows that
	// namespace (`unshare --mount-proc` does the same).
	if _, err := c.Exec(ctx, n.Name, "mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", "/proc"); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
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
		name:     containerdName(n.Name),
		argv:     []string{c.tools.containerd, "--config", filepath.Join(nd, "containerd.toml")},
		nodeInit: initProc.PID,
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
		nodeInit: c.procOf(initName(n.Name)).PID,
	})
	if err != nil {
		return err
	}
	url := "http://" + net.JoinHostPort(n.IP, strconv.Itoa(n.HealthzPort)) + "/healthz"
	return c.poll(ctx, kubeletName(n.Name), time.Minute, func(ctx context.Context) (bool, error) {
		return httpOK(ctx, url), nil
	})
}

// stopNode stops a node at once, as a power cut would. Killing its init
// kills every process in its PID namespace, containers included; with its
// last process gone, the mount namespace and every mount in it (pod volumes,
// bind mounts, overlay snapshots, network namespace files) go away with it.
// kubelet and containerd are killed by name too, should the init be gone.
func (c *Cluster) stopNode(n node) error {
	c.mu.Lock()
	procs := pick(c.st.Procs, initName(n.Name), kubeletName(n.Name), containerdName(n.Name))
	c.mu.Unlock()
	return errors.Join(killProcs(procs), killCgroups(nodeCgroups(n.CgroupRoot)))
}

// RestartKubelet stops a node's kubelet and starts it again in the node's
// namespaces. Pods keep running and mounts stay, as when kubelet
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
	if err := c.StopNode(name); err != nil {
		return err
	}
	return c.StartNode(ctx, name)
}

// StopNode stops a whole node as a power-off would (see RestartNode); its
// Node object stays until someone deletes it.
func (c *Cluster) StopNode(name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	if err := c.stopNode(n); err != nil {
		return fmt.Errorf("stopping node %s: %w", name, err)
	}
	return nil
}

// StartNode starts a node StopNode stopped, with its disks as they were and
// fresh runtime state, and returns once its kubelet is healthy. A kubelet
// whose Node object was deleted registers it again.
func (c *Cluster) StartNode(ctx context.Context, name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
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
		return fmt.Errorf("starting node %s: %w", name, err)
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
