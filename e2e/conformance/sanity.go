package conformance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/framework"
)

// Paths as the node and the agent's container see them: deploy/base runs
// `stickyvol node --kubelet-root=/var/lib/kubelet` and mounts the node's
// /var/lib/kubelet at the same path with Bidirectional propagation.
const (
	nodeSocket = "/var/lib/kubelet/plugins/" + framework.DriverName + "/csi.sock"
	// sanityDir holds csi-sanity's target and staging directories. It
	// must be under the kubelet root: that is the part of the node's file
	// system the agent's container shares, so a bind mount the driver makes
	// there is the one csi-sanity looks at.
	sanityDir = "/var/lib/kubelet/stickyvol-sanity"
	// sanityVolumeSize is what each csi-sanity volume asks for (its
	// default is 10 GiB): capacity is accounted, and the node's room is
	// not what this step tests.
	sanityVolumeSize = 1 << 20
)

// SanityConfig says how RunSanity runs csi-sanity.
type SanityConfig struct {
	// Binary is Binaries.CSISanity.
	Binary string
	// Node is the real node whose agent is tested. Default: the first.
	Node string
	// ReportDir receives csi-sanity.xml (JUnit) and csi-sanity.log.
	ReportDir string
	// Timeout bounds the run (Ginkgo's suite timeout). Default: 15m.
	Timeout time.Duration
}

// RunSanity runs csi-sanity in a node's mount namespace against the driver
// in the agent pod of the running DaemonSet, through the CSI socket kubelet
// uses, and returns what its JUnit report says. It also fails when the run
// restarted the agent's container, or left volumes in the node's data root
// or directories under its kubelet root: a user would see those as a crash
// and as capacity that never comes back.
func RunSanity(ctx context.Context, f *framework.Framework, cfg SanityConfig) (*Report, error) {
	node, err := pickNode(f.Cluster, cfg.Node)
	if err != nil {
		return nil, err
	}
	pod, err := agentPod(ctx, f, node.Name)
	if err != nil {
		return nil, err
	}
	if _, err := f.Cluster.Exec(ctx, node.Name, "test", "-S", nodeSocket); err != nil {
		return nil, fmt.Errorf("no CSI socket %s on %s, though pod %s is Ready: %w", nodeSocket, node.Name, pod.Name, err)
	}
	volumesDir := filepath.Join(node.DataDir, "volumes")
	before, err := listDir(volumesDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.ReportDir, 0o755); err != nil {
		return nil, err
	}
	// csi-sanity makes its target and staging directories with mkdir, not
	// mkdir -p: their parent must exist.
	if out, err := f.Cluster.Exec(ctx, node.Name, "mkdir", "-p", sanityDir); err != nil {
		return nil, fmt.Errorf("making %s on %s: %w: %s", sanityDir, node.Name, err, out)
	}
	junit := filepath.Join(cfg.ReportDir, "csi-sanity.xml")
	logPath := filepath.Join(cfg.ReportDir, "csi-sanity.log")
	// cfg.ReportDir is a host path: the node's mount namespace sees the
	// host's file system outside the node's own directories.
	out, runErr := f.Cluster.Exec(ctx, node.Name, cfg.Binary,
		"-csi.endpoint=unix://"+nodeSocket,
		"-csi.mountdir="+sanityDir+"/target",
		"-csi.stagingdir="+sanityDir+"/staging",
		"-csi.testvolumesize="+strconv.Itoa(sanityVolumeSize),
		"-ginkgo.junit-report="+junit,
		"-ginkgo.timeout="+cmpOr(cfg.Timeout, 15*time.Minute).String(),
		"-ginkgo.no-color")
	if err := os.WriteFile(logPath, out, 0o644); err != nil {
		return nil, err
	}
	report, err := ReadJUnit(junit)
	if err != nil {
		if runErr != nil {
			return nil, fmt.Errorf("csi-sanity on %s wrote no report (%w): %w; its output is in %s", node.Name, runErr, err, logPath)
		}
		return nil, fmt.Errorf("csi-sanity on %s wrote no report: %w; its output is in %s", node.Name, err, logPath)
	}
	return report, checkAfterSanity(ctx, f, node, pod, before)
}

// checkAfterSanity checks what csi-sanity must leave as it found it.
func checkAfterSanity(ctx context.Context, f *framework.Framework, node cluster.Node, pod *v1.Pod, before []string) error {
	var errs []error
	after, err := listDir(filepath.Join(node.DataDir, "volumes"))
	if err != nil {
		return err
	}
	var left []string
	for _, v := range after {
		if !slices.Contains(before, v) {
			left = append(left, v)
		}
	}
	if len(left) > 0 {
		errs = append(errs, fmt.Errorf("csi-sanity left %d volumes in %s's data root: %v", len(left), node.Name, left))
	}
	// rmdir, not rm -r: whatever is left may be a mount of a volume.
	if out, err := f.Cluster.Exec(ctx, node.Name, "sh", "-c", `test ! -e "$1" || rmdir "$1"`, "sh", sanityDir); err != nil {
		errs = append(errs, fmt.Errorf("csi-sanity left files under %s on %s: %s", sanityDir, node.Name, out))
	}
	now, err := f.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if restarts(now) != restarts(pod) {
		errs = append(errs, fmt.Errorf("the agent's container in %s restarted during csi-sanity (restarts %d -> %d)",
			pod.Name, restarts(pod), restarts(now)))
	}
	return errors.Join(errs...)
}

func pickNode(c *cluster.Cluster, name string) (cluster.Node, error) {
	nodes := c.Nodes()
	for _, n := range nodes {
		if name == "" || n.Name == name {
			return n, nil
		}
	}
	return cluster.Node{}, fmt.Errorf("no real node %q in the cluster (%d nodes)", name, len(nodes))
}

// agentPod returns the Ready stickyvol pod on a node.
func agentPod(ctx context.Context, f *framework.Framework, node string) (*v1.Pod, error) {
	pods, err := f.Client.CoreV1().Pods(framework.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: framework.AgentPodLabel,
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		if p := &pods.Items[i]; p.DeletionTimestamp == nil && framework.PodReady(p) {
			return p, nil
		}
	}
	return nil, fmt.Errorf("no Ready stickyvol pod on %s (%d pods there)", node, len(pods.Items))
}

func restarts(p *v1.Pod) int32 {
	var n int32
	for _, cs := range p.Status.ContainerStatuses {
		n += cs.RestartCount
	}
	return n
}

// listDir returns the names in dir, none if it does not exist.
func listDir(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names, nil
}
