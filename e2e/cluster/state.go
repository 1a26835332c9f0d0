package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// stateFile is the name of the file, in the cluster directory, that lists
// everything a cluster made on this machine. Every host change is recorded
// here before it is made, so that Down can undo it after a crash of the
// process that made it.
const stateFile = "state.json"

// state is the content of the state file.
type state struct {
	Dir       string    `json:"dir"`
	StartedAt time.Time `json:"startedAt"`
	Binaries  Binaries  `json:"binaries"`
	Images    []string  `json:"images,omitempty"`
	Ports     ports     `json:"ports"`
	Nodes     []node    `json:"nodes"`
	FakeNodes int       `json:"fakeNodes,omitempty"`
	// FakeNodePods is the pods capacity of each kwok node.
	FakeNodePods int `json:"fakeNodePods,omitempty"`
	// PlainDataRoots: the nodes' data roots are host directories, not
	// btrfs images.
	PlainDataRoots bool `json:"plainDataRoots,omitempty"`
	CgroupV2       bool `json:"cgroupV2"`

	// Procs maps a component name ("etcd", "node-1/kubelet") to the process
	// running it.
	Procs map[string]proc `json:"procs"`
	// Links are the network links this cluster created.
	Links []string `json:"links,omitempty"`
	// Rules are iptables rules this cluster inserted, as the arguments that
	// follow -I/-D (chain first).
	Rules [][]string `json:"rules,omitempty"`
	// Sysctls holds the values that sysctls had before the cluster started.
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// HostDirs are the empty mount points this cluster created on the host.
	HostDirs []string `json:"hostDirs,omitempty"`
	// Cgroups are the cgroup directories this cluster created, one per node
	// and hierarchy, e.g. /sys/fs/cgroup/memory/stickyvol-node-1.
	Cgroups []string `json:"cgroups,omitempty"`
	// KubeChains lists, per "iptables/nat"-style key, the KUBE-* chains that
	// existed before the cluster started; Down removes the others.
	KubeChains map[string][]string `json:"kubeChains,omitempty"`
}

// node is the state of one real node.
type node struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	// IP is the node's address: the gateway of its bridge.
	IP          string `json:"ip"`
	Bridge      string `json:"bridge"`
	CgroupRoot  string `json:"cgroupRoot"`
	KubeletPort int    `json:"kubeletPort"`
	HealthzPort int    `json:"healthzPort"`
}

// ports are the TCP ports the cluster's components listen on, chosen free at
// start.
type ports struct {
	EtcdClient    int `json:"etcdClient"`
	EtcdPeer      int `json:"etcdPeer"`
	APIServer     int `json:"apiServer"`
	ControllerMgr int `json:"controllerManager"`
	Scheduler     int `json:"scheduler"`
	ProxyHealthz  int `json:"proxyHealthz"`
	ProxyMetrics  int `json:"proxyMetrics"`
	DNSReady      int `json:"dnsReady"`
	KwokServer    int `json:"kwokServer,omitempty"`
	// SnapshotCtrl is the snapshot-controller's metrics port.
	SnapshotCtrl int `json:"snapshotController,omitempty"`
}

// readState reads the state file in dir. It returns an error wrapping
// os.ErrNotExist when there is none.
func readState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	st := &state{}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Join(dir, stateFile), err)
	}
	if st.Procs == nil {
		st.Procs = map[string]proc{}
	}
	return st, nil
}

// write stores the state atomically: a temporary file, fsync, rename.
func (st *state) write() error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(st.Dir, stateFile), b, 0o600)
}

// appendUnique appends v to list unless it is already there.
func appendUnique(list []string, v string) []string {
	if slices.Contains(list, v) {
		return list
	}
	return append(list, v)
}

// writeFileAtomic writes data to a temporary file beside path, syncs it and
// renames it over path, so that no reader (kubelet watching a manifest
// directory, Down after a crash) ever sees a half-written file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	err = errors.Join(err, tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
