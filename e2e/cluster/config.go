// Package cluster runs a real Kubernetes cluster on this machine, shaped like
// a kind cluster but with no container image for the nodes and no registry.
//
// The control plane (etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, and the external-snapshotter's snapshot-controller with the
// snapshot CRDs), one kube-proxy and CoreDNS run as host processes. Each real
// node is a private mount namespace with its own /var/lib/kubelet (rshared),
// /var/lib/stickyvol, /var/log, /var/lib/cni and /run/containerd, bound from a
// per-node directory, and runs its own containerd and kubelet on its own
// bridge and pod subnet. Manifests written for a kind cluster, such as a
// DaemonSet that mounts the hostPath /var/lib/kubelet with Bidirectional
// propagation, run unchanged. kwok can add fake nodes for scale work.
//
// Everything the cluster makes on the host (processes, links, addresses,
// iptables rules, sysctls, cgroups, mount points) is recorded in a state file
// before it is made, so Down undoes it after a crash, and Up starts by doing
// the same.
package cluster

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
)

// Network layout. Pod subnets are 10.88.<i>.0/24 for node i (1..maxNodes);
// the API server and cluster DNS addresses sit on a bridge with no ports, as
// this kernel has no dummy links.
const (
	podNetwork    = "10.88.0.0/16"
	apiAddress    = "10.88.255.1"
	dnsAddress    = "10.88.255.2"
	serviceRange  = "10.96.0.0/16"
	kubernetesSvc = "10.96.0.1" // first address of serviceRange
	fakePodRange  = "10.89.0.0/16"
	fakeNodeIP    = "10.89.255.254"
	clusterDomain = "cluster.local"

	// namePrefix starts the name of every link and cgroup the cluster
	// makes, and the comment on its iptables rules.
	namePrefix = "stickyvol-"
	apiLink    = namePrefix + "api"

	maxNodes = 50

	// defaultFakeNodePods is the pods capacity kwok gives a node of its
	// own; FakeNodePods raises it for scenarios with more pods per node.
	defaultFakeNodePods = 110
)

// NoRealNodes, as Config.Nodes, asks for a cluster of kwok nodes only: the
// zero value of Nodes stands for the default of two real nodes.
const NoRealNodes = -1

// Config describes the cluster Up brings up.
type Config struct {
	// CacheDir holds built binaries, images and the cluster directory
	// (CacheDir/cluster). Default: DefaultCacheDir().
	CacheDir string
	// Nodes is the number of real nodes (1..50), or NoRealNodes for none
	// (then FakeNodes must be positive). Default: 2.
	Nodes int
	// FakeNodes is the number of kwok nodes. They carry the taint
	// kwok.x-k8s.io/node=fake:NoSchedule so that only pods that ask for
	// them land there.
	FakeNodes int
	// FakeNodePods is how many pods each kwok node has room for (its pods
	// capacity and allocatable). Default: 110, as kwok's own nodes.
	FakeNodePods int
	// Out receives progress lines. Default: io.Discard.
	Out io.Writer
	// Binaries, when set, are used as they are; otherwise Up calls
	// EnsureOSPackages and EnsureBinaries.
	Binaries *Binaries
	// Images are OCI tarballs imported into every node; when nil, Up
	// calls EnsureBaseImages.
	Images []string
	// PlainDataRoots keeps each node's /var/lib/stickyvol a plain
	// directory of the host's file system; by default it is a btrfs file
	// system of its own (see makeDataRoots), so volume sizes are enforced.
	PlainDataRoots bool
	// Retain keeps what Up started when it fails, for debugging; by
	// default a failed Up tears the cluster down (logs are kept).
	Retain bool
}

// ClusterDir returns the directory of the cluster under cacheDir.
func ClusterDir(cacheDir string) string {
	return filepath.Join(cacheDir, "cluster")
}

func (cfg *Config) setDefaults() error {
	if cfg.CacheDir == "" {
		cfg.CacheDir = DefaultCacheDir()
	}
	abs, err := filepath.Abs(cfg.CacheDir)
	if err != nil {
		return err
	}
	cfg.CacheDir = abs
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Nodes == 0 {
		cfg.Nodes = 2
	}
	if cfg.FakeNodePods == 0 {
		cfg.FakeNodePods = defaultFakeNodePods
	}
	return cfg.validate()
}

func (cfg *Config) validate() error {
	switch {
	case cfg.Nodes == NoRealNodes && cfg.FakeNodes < 1:
		return errors.New("a cluster without real nodes needs fake nodes")
	case cfg.Nodes != NoRealNodes && (cfg.Nodes < 1 || cfg.Nodes > maxNodes):
		return fmt.Errorf("nodes must be between 1 and %d, not %d", maxNodes, cfg.Nodes)
	case cfg.FakeNodes < 0:
		return fmt.Errorf("fake nodes must not be negative, not %d", cfg.FakeNodes)
	case cfg.FakeNodePods < 1:
		return fmt.Errorf("pods per fake node must be positive, not %d", cfg.FakeNodePods)
	}
	return nil
}

// realNodes is the number of real nodes once defaults are set.
func (cfg *Config) realNodes() int {
	if cfg.Nodes == NoRealNodes {
		return 0
	}
	return cfg.Nodes
}

// nodeName is the name of real node i (1-based).
func nodeName(i int) string { return fmt.Sprintf("node-%d", i) }

// fakeNodeName is the name of kwok node i (1-based).
func fakeNodeName(i int) string { return fmt.Sprintf("kwok-node-%d", i) }

func nodeBridge(i int) string { return fmt.Sprintf("%sn%d", namePrefix, i) }

func nodeIP(i int) string { return fmt.Sprintf("10.88.%d.1", i) }

func podSubnet(i int) string { return fmt.Sprintf("10.88.%d.0/24", i) }
