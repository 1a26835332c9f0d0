//go:build e2e

package story

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/framework"
	"github.com/stickyvol/stickyvol/internal/testutil"
)

// env is one scenario: its namespace and the framework.
type env struct {
	*framework.Framework
	t     *testing.T
	ns    string
	begin time.Time
}

// start begins a scenario in a namespace of its own and returns a context
// with the scenario's deadline. When the scenario ends it logs the run time,
// dumps events, pods, claims, stickyvol logs and the cluster's log tails if
// the scenario failed, and deletes the namespace.
func start(t *testing.T, timeout time.Duration) (context.Context, *env) {
	testutil.RequireRoot(t)
	if suite.setupErr != nil {
		t.Fatalf("no cluster with stickyvol: %v", suite.setupErr)
	}
	f := suite.f
	begin := time.Now()
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(1)))
	// Not t.Context(): that is canceled before the cleanups run, and they
	// talk to the cluster too (uncordon, delete, dump).
	ctx, cancel := context.WithTimeout(klog.NewContext(context.Background(), logger), timeout)
	ns, err := f.Client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: "e2e-" + strings.ToLower(strings.TrimPrefix(t.Name(), "Test")) + "-",
	}}, metav1.CreateOptions{})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Not waited for: the next scenario does not depend on it, and
		// the claims' volumes go with it (reclaim policy Delete).
		err := f.Client.CoreV1().Namespaces().Delete(context.WithoutCancel(ctx), ns.Name, metav1.DeleteOptions{})
		if err != nil {
			t.Errorf("deleting namespace %s: %v", ns.Name, err)
		}
	})
	t.Cleanup(func() {
		took := time.Since(begin)
		if t.Failed() {
			t.Logf("scenario failed after %s; what the cluster says:", took.Round(100*time.Millisecond))
			f.Dump(ctx, t.Output(), ns.Name)
		}
		cancel()
		t.Logf("scenario run time: %s", took.Round(100*time.Millisecond))
		recordTime(t.Name(), took, t.Failed())
	})
	return ctx, &env{Framework: f, t: t, ns: ns.Name, begin: begin}
}

// step logs what the scenario does next, with the time since it began.
func (e *env) step(format string, args ...any) {
	e.t.Helper()
	e.t.Logf("--- [%5.1fs] %s", time.Since(e.begin).Seconds(), fmt.Sprintf(format, args...))
}

// node returns the cluster node of that name.
func (e *env) node(name string) cluster.Node {
	e.t.Helper()
	for _, n := range e.Cluster.Nodes() {
		if n.Name == name {
			return n
		}
	}
	e.t.Fatalf("no node %q in the cluster", name)
	return cluster.Node{}
}

// otherNode returns a real node other than name.
func (e *env) otherNode(name string) string {
	e.t.Helper()
	for _, n := range e.Cluster.Nodes() {
		if n.Name != name {
			return n.Name
		}
	}
	e.t.Fatalf("the cluster has no node besides %s", name)
	return ""
}

// binding is where a pod's data lives, as a user finds it with kubectl.
type binding struct {
	pod, claim, pv, node, handle string
	podUID                       types.UID
}

func (b binding) String() string {
	return fmt.Sprintf("pod %s -> claim %s -> PV %s -> node %s", b.pod, b.claim, b.pv, b.node)
}

// bindingOf follows a Ready pod's "data" volume to its claim and PV and
// checks that they agree: the claim is Bound to the PV, the PV is a stickyvol
// volume claimed by that claim, and its node affinity names the pod's node.
func (e *env) bindingOf(ctx context.Context, pod *v1.Pod) binding {
	e.t.Helper()
	var claimName string
	for _, vol := range pod.Spec.Volumes {
		if vol.Name == "data" && vol.PersistentVolumeClaim != nil {
			claimName = vol.PersistentVolumeClaim.ClaimName
		}
	}
	if claimName == "" {
		e.t.Fatalf("pod %s has no claim in its volume \"data\"", pod.Name)
	}
	claim, err := e.Client.CoreV1().PersistentVolumeClaims(e.ns).Get(ctx, claimName, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	if claim.Status.Phase != v1.ClaimBound || claim.Spec.VolumeName == "" {
		e.t.Fatalf("claim %s of running pod %s is %s, not Bound", claimName, pod.Name, claim.Status.Phase)
	}
	pv, err := e.Client.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != framework.DriverName {
		e.t.Fatalf("PV %s of claim %s is not a %s volume: %+v", pv.Name, claimName, framework.DriverName, pv.Spec.PersistentVolumeSource)
	}
	if ref := pv.Spec.ClaimRef; ref == nil || ref.Namespace != e.ns || ref.Name != claimName || ref.UID != claim.UID {
		e.t.Fatalf("PV %s is not claimed by %s/%s (uid %s): claimRef %+v", pv.Name, e.ns, claimName, claim.UID, pv.Spec.ClaimRef)
	}
	if nodes := framework.NodesOf(pv); len(nodes) != 1 || nodes[0] != pod.Spec.NodeName {
		e.t.Fatalf("PV %s node affinity allows %v; its pod %s runs on %s", pv.Name, nodes, pod.Name, pod.Spec.NodeName)
	}
	return binding{pod: pod.Name, podUID: pod.UID, claim: claimName, pv: pv.Name, node: pod.Spec.NodeName, handle: pv.Spec.CSI.VolumeHandle}
}

// volumeDir is the volume's directory as the node's host sees it: what
// /var/lib/stickyvol/volumes/<id> is on that node.
func (e *env) volumeDir(b binding) string {
	return filepath.Join(e.node(b.node).DataDir, "volumes", b.handle)
}

// blobSize is the size of the random file each pod writes.
const blobSize = 256 << 10

// writeBlob writes random bytes to /data/blob in the pod, as the pod's user,
// and returns their checksum.
func (e *env) writeBlob(ctx context.Context, pod string) string {
	e.t.Helper()
	data := make([]byte, blobSize)
	rand.Read(data)
	if _, err := e.Exec(ctx, e.ns, pod, bytes.NewReader(data), "sh", "-c", "cat > /data/blob.tmp && mv /data/blob.tmp /data/blob"); err != nil {
		e.t.Fatal(err)
	}
	return checksum(data)
}

// readBlob reads /data/blob in the pod and returns its checksum.
func (e *env) readBlob(ctx context.Context, pod string) string {
	e.t.Helper()
	data, err := e.Exec(ctx, e.ns, pod, nil, "cat", "/data/blob")
	if err != nil {
		e.t.Fatal(err)
	}
	return checksum(data)
}

// checkBlob fails unless the pod reads back the blob with checksum want.
func (e *env) checkBlob(ctx context.Context, pod, want, when string) {
	e.t.Helper()
	if got := e.readBlob(ctx, pod); got != want {
		e.t.Fatalf("%s: %s reads /data/blob with sha256 %s, want %s (written before)", when, pod, got, want)
	}
}

// checkHostBlob fails unless the blob is in the volume's directory on its
// node, with checksum want.
func (e *env) checkHostBlob(b binding, want string) {
	e.t.Helper()
	path := filepath.Join(e.volumeDir(b), "blob")
	data, err := os.ReadFile(path)
	if err != nil {
		e.t.Fatalf("%s: the blob is not in the volume's directory on the node: %v", b, err)
	}
	if got := checksum(data); got != want {
		e.t.Fatalf("%s: %s has sha256 %s, want %s", b, path, got, want)
	}
}

func checksum(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}

// deletePod deletes the pod (that very pod, by UID) and waits until it is gone.
func (e *env) deletePod(ctx context.Context, pod *v1.Pod) {
	e.t.Helper()
	err := e.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) {
		e.t.Fatal(err)
	}
	if err := e.WaitForPodGone(ctx, pod.Namespace, pod.Name, string(pod.UID)); err != nil {
		e.t.Fatal(err)
	}
}

// podReady waits for the pod to be Ready and returns it.
func (e *env) podReady(ctx context.Context, name string) *v1.Pod {
	e.t.Helper()
	pod, err := e.WaitForPodReady(ctx, e.ns, name)
	if err != nil {
		e.t.Fatal(err)
	}
	return pod
}

// volumeDirs lists the volume directories and records on every node's host.
func (e *env) volumeDirs() map[string]bool {
	e.t.Helper()
	found := map[string]bool{}
	for _, n := range e.Cluster.Nodes() {
		for _, sub := range []string{"volumes", "meta"} {
			entries, err := os.ReadDir(filepath.Join(n.DataDir, sub))
			if err != nil && !os.IsNotExist(err) {
				e.t.Fatal(err)
			}
			for _, entry := range entries {
				found[filepath.Join(n.Name, sub, entry.Name())] = true
			}
		}
	}
	return found
}

// setCordoned marks the node unschedulable or schedulable again, as
// `kubectl cordon` and `uncordon` do.
func (e *env) setCordoned(ctx context.Context, node string, cordoned bool) {
	e.t.Helper()
	patch := fmt.Sprintf(`{"spec":{"unschedulable":%v}}`, cordoned)
	if _, err := e.Client.CoreV1().Nodes().Patch(context.WithoutCancel(ctx), node, types.MergePatchType,
		[]byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Fatalf("cordon=%v %s: %v", cordoned, node, err)
	}
}
