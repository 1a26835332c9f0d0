package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// up brings the cluster up in a clean cluster directory.
func (c *Cluster) up(ctx context.Context, cfg Config) error {
	var err error
	if c.tools, err = findTools(); err != nil {
		return err
	}
	v2, err := cgroupV2()
	if err != nil {
		return fmt.Errorf("finding the cgroup version: %w", err)
	}
	if err := os.RemoveAll(c.dir); err != nil {
		return err
	}
	for _, d := range []string{"logs", "config", "kubeconfig", "bin"} {
		if err := os.MkdirAll(filepath.Join(c.dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := c.initState(ctx, cfg, v2); err != nil {
		return err
	}
	c.step("cluster directory %s (cgroup v2: %v)", c.dir, v2)
	if err := c.writePKI(); err != nil {
		return err
	}
	if err := c.prepareHost(ctx); err != nil {
		return err
	}
	c.step("host ready: bridges, addresses, cgroups, sysctls")
	if err := c.startAll(ctx); err != nil {
		return err
	}
	if err := c.waitReady(ctx); err != nil {
		return err
	}
	// PATH gets a directory with kubectl alone, not every cached binary.
	if err := os.Symlink(c.st.Binaries.Kubectl, filepath.Join(c.dir, "bin", "kubectl")); err != nil {
		return err
	}
	c.step("cluster ready: %d nodes, %d fake nodes", len(c.st.Nodes), c.st.FakeNodes)
	return nil
}

// initState chooses ports and node layouts and writes the first state file,
// with the host's sysctls and KUBE-* chains as they are before any change.
func (c *Cluster) initState(ctx context.Context, cfg Config, v2 bool) error {
	nodes := cfg.realNodes()
	const clusterPorts = 10 // then two per node
	p, err := freePorts(clusterPorts + 2*nodes)
	if err != nil {
		return err
	}
	st := &state{
		Dir:            c.dir,
		StartedAt:      time.Now(),
		Binaries:       *cfg.Binaries,
		Images:         cfg.Images,
		FakeNodes:      cfg.FakeNodes,
		FakeNodePods:   cfg.FakeNodePods,
		PlainDataRoots: cfg.PlainDataRoots,
		CgroupV2:       v2,
		Procs:          map[string]proc{},
		Ports: ports{
			EtcdClient: p[0], EtcdPeer: p[1], APIServer: p[2], ControllerMgr: p[3], Scheduler: p[4],
			ProxyHealthz: p[5], ProxyMetrics: p[6], DNSReady: p[7], KwokServer: p[8], SnapshotCtrl: p[9],
		},
		Sysctls:    readSysctls(savedSysctls),
		KubeChains: kubeChains(ctx),
	}
	for i := 1; i <= nodes; i++ {
		st.Nodes = append(st.Nodes, node{
			Name:        nodeName(i),
			Index:       i,
			IP:          nodeIP(i),
			Bridge:      nodeBridge(i),
			CgroupRoot:  namePrefix + nodeName(i),
			KubeletPort: p[clusterPorts+2*(i-1)],
			HealthzPort: p[clusterPorts+1+2*(i-1)],
		})
	}
	c.st = st
	// A unix socket path must fit in sun_path (108 bytes with its NUL).
	if sock := c.containerdSocket(nodeName(nodes)) + ".ttrpc"; nodes > 0 && len(sock) >= 108 {
		return fmt.Errorf("socket path %s is too long for a unix socket: use a shorter --cache-dir", sock)
	}
	return st.write()
}

// writePKI writes the certificates and every component's kubeconfig.
func (c *Cluster) writePKI() error {
	p, err := writeClusterPKI(filepath.Join(c.dir, "pki"), c.st.Nodes)
	if err != nil {
		return err
	}
	users := []string{"admin", "controller-manager", "scheduler", "kube-proxy", snapshotControllerUser}
	for _, n := range c.st.Nodes {
		users = append(users, "kubelet-"+n.Name)
	}
	for _, u := range users {
		if err := writeKubeconfig(c.kubeconfigPath(u), c.apiServerURL(), p, u); err != nil {
			return err
		}
	}
	return nil
}

// prepareHost makes the host changes, each recorded before it is made: the
// sysctls routing between bridges needs, the API/DNS bridge, one bridge per
// node, the FORWARD rule, the nodes' mount points, data roots and cgroups.
func (c *Cluster) prepareHost(ctx context.Context) error {
	for k, v := range map[string]string{"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"} {
		if _, ok := c.st.Sysctls[k]; !ok {
			continue // br_netfilter not loaded: bridged traffic skips iptables anyway
		}
		if err := writeSysctl(k, v); err != nil {
			return fmt.Errorf("setting sysctl %s: %w", k, err)
		}
	}
	if err := c.addBridge(ctx, apiLink, apiAddress+"/32", dnsAddress+"/32"); err != nil {
		return err
	}
	for _, n := range c.st.Nodes {
		if err := c.addBridge(ctx, n.Bridge, n.IP+"/24"); err != nil {
			return err
		}
	}
	if err := c.insertRule(ctx, forwardRule); err != nil {
		return err
	}
	if err := c.ensureHostDirs(); err != nil {
		return err
	}
	if !c.st.PlainDataRoots {
		if err := c.makeDataRoots(ctx); err != nil {
			return err
		}
	}
	for _, n := range c.st.Nodes {
		if err := c.createCgroupRoot(n.CgroupRoot); err != nil {
			return err
		}
		if err := c.writeNodeConfig(n); err != nil {
			return err
		}
	}
	return nil
}
