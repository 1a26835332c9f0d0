package framework

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/stickyvol/stickyvol/capacity"
)

// HostAgents runs `stickyvol node` as host processes for kwok's fake nodes,
// one per node with a data root of its own, so that scale and chaos
// scenarios get hundreds of real volumes without hundreds of real pods.
// They are the cluster's processes (cluster.StartProcess): Down stops them.
// They use the admin kubeconfig, so the node policy, which binds the agents'
// service account, does not apply to them.
type HostAgents struct {
	f      *Framework
	binary string
	args   []string
	// Roots maps each fake node to its agent's data root on the host.
	Roots map[string]string
}

// StartHostAgents starts an agent for every kwok node of the cluster. binary
// is the stickyvol binary BuildImages or BuildAgent built (AgentBinary); args
// are appended to each agent's flags (e.g. --capacity=10Gi). It does for
// each node what kubelet would on registering the driver: the node gets the
// driver's topology label and a CSINode that lists the driver.
func (f *Framework) StartHostAgents(ctx context.Context, binary string, args ...string) (*HostAgents, error) {
	nodes, err := f.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: FakeNodeLabel + "=kwok"})
	if err != nil {
		return nil, err
	}
	h := &HostAgents{f: f, binary: binary, args: args, Roots: map[string]string{}}
	for _, n := range nodes.Items {
		h.Roots[n.Name] = filepath.Join(f.Cluster.Dir(), "host-agents", n.Name)
		for _, dir := range []string{h.Roots[n.Name], h.kubeletRoot(n.Name)} {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, err
			}
		}
		if err := f.registerDriver(ctx, n.Name); err != nil {
			return nil, err
		}
		if err := h.Start(ctx, n.Name); err != nil {
			return nil, err
		}
	}
	if len(h.Roots) == 0 {
		return nil, fmt.Errorf("the cluster has no kwok nodes")
	}
	return h, nil
}

// Nodes lists the fake nodes that have a host agent.
func (h *HostAgents) Nodes() []string {
	var names []string
	for n := range h.Roots {
		names = append(names, n)
	}
	return names
}

func processName(node string) string { return "host-agent/" + node }

// hostAgentSockets holds the host agents' kubelet roots, where their CSI
// sockets go: short, because a unix socket's path has at most 107 bytes and
// the cluster's directory is deep.
const hostAgentSockets = "/tmp/stickyvol-host-agents"

func (h *HostAgents) kubeletRoot(node string) string { return filepath.Join(hostAgentSockets, node) }

// Start starts the agent of node (again) and returns once its driver
// listens on its socket, or with the end of its log if it exits first.
func (h *HostAgents) Start(ctx context.Context, node string) error { return h.StartWith(ctx, node) }

// StartWith is Start with flags for this agent only, after the others.
func (h *HostAgents) StartWith(ctx context.Context, node string, extra ...string) error {
	argv := append([]string{h.binary, "node",
		"--node-name=" + node,
		"--kubeconfig=" + h.f.Cluster.Kubeconfig(),
		"--data-root=" + h.Roots[node],
		"--kubelet-root=" + h.kubeletRoot(node),
		"--register-with-kubelet=false",
		"--metrics-address=",
		"-v=2",
	}, h.args...)
	argv = append(argv, extra...)
	// A killed agent leaves its socket behind: gone, it cannot be taken
	// for the new one's.
	socket := filepath.Join(h.kubeletRoot(node), "plugins", DriverName, "csi.sock")
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := h.f.Cluster.StartProcess(ctx, processName(node), argv); err != nil {
		return err
	}
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		if _, running := h.Running(node); !running {
			return false, fmt.Errorf("the agent of %s exited:\n%s", node, h.LogTail(node, 10))
		}
		_, err := os.Stat(socket)
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("starting the agent of %s: %w", node, err)
	}
	return nil
}

// Kill kills the agent of node with SIGKILL, in whatever it was doing.
func (h *HostAgents) Kill(node string) error { return h.f.Cluster.KillProcess(processName(node)) }

// Running says whether the agent of node runs, and its PID.
func (h *HostAgents) Running(node string) (int, bool) {
	return h.f.Cluster.ProcessPID(processName(node)), h.f.Cluster.ProcessRunning(processName(node))
}

// LogTail is the end of node's agent log, for a failure message.
func (h *HostAgents) LogTail(node string, lines int) string {
	return h.f.Cluster.LogTail(processName(node), lines)
}

// Stop kills every agent, takes the driver off the fake nodes' CSINodes and
// deletes the CSIStorageCapacity objects the agents published (outside a
// pod they have no owner to go with), so that nothing places a claim on a
// node no agent serves.
func (h *HostAgents) Stop(ctx context.Context) error {
	var errs []error
	for node := range h.Roots {
		if err := h.Kill(node); err != nil {
			errs = append(errs, err)
		}
		if err := capacity.Withdraw(ctx, h.f.Client, Namespace, DriverName, node); err != nil {
			errs = append(errs, err)
		}
		err := h.f.Client.StorageV1().CSINodes().Delete(ctx, node, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(append(errs, os.RemoveAll(hostAgentSockets))...)
}

// registerDriver labels the node with the driver's topology key and lists
// the driver on its CSINode, as kubelet does when a node's agent registers.
func (f *Framework) registerDriver(ctx context.Context, node string) error {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, TopologyKey, node)
	if _, err := f.Client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("labelling %s: %w", node, err)
	}
	n, err := f.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	csiNode := &storagev1.CSINode{
		ObjectMeta: metav1.ObjectMeta{Name: node, OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "v1", Kind: "Node", Name: node, UID: n.UID}}},
		Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{
			{Name: DriverName, NodeID: node, TopologyKeys: []string{TopologyKey}}}},
	}
	_, err = f.Client.StorageV1().CSINodes().Create(ctx, csiNode, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("CSINode of %s: %w", node, err)
	}
	return nil
}
