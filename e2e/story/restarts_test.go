//go:build e2e

package story

import (
	"context"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// TestDataSurvivesRestarts writes a random file through each pod of a
// two-replica StatefulSet (a pod and its volume on each node) and reads it
// back, with the same claim on the same node, after each of: the pods are
// deleted and recreated; the stickyvol pod of each node is restarted while
// the volumes are mounted; each node's kubelet is restarted.
func TestDataSurvivesRestarts(t *testing.T) {
	ctx, e := start(t, 6*time.Minute)
	pods := e.createStatefulSet(ctx, statefulSet("keeper", 2, onePerNode))
	sums := map[string]string{}
	bindings := map[string]binding{}
	for _, pod := range pods {
		b := e.bindingOf(ctx, pod)
		sums[pod.Name], bindings[pod.Name] = e.writeBlob(ctx, pod.Name), b
		e.checkHostBlob(b, sums[pod.Name])
		t.Logf("%s: wrote blob %s", b, sums[pod.Name])
	}
	// recreate deletes the pods, waits for the StatefulSet to bring them
	// back, and checks they found their volumes and data again.
	recreate := func(when string) {
		t.Helper()
		for _, pod := range pods {
			e.deletePod(ctx, pod)
		}
		pods = e.statefulSetReady(ctx, "keeper")
		e.checkVolumes(ctx, pods, bindings, sums, when, false)
	}

	e.step("delete the pods")
	recreate("after the pods were recreated")

	e.step("restart the stickyvol pod on every node while the volumes are mounted")
	e.restartAgents(ctx)
	e.checkVolumes(ctx, e.statefulSetReady(ctx, "keeper"), bindings, sums, "after the stickyvol pods restarted", true)
	recreate("after the stickyvol pods restarted, recreated pods")

	e.step("restart the kubelet of every node")
	g, gctx := errgroup.WithContext(ctx)
	for _, n := range e.Cluster.Nodes() {
		g.Go(func() error { return e.Cluster.RestartKubelet(gctx, n.Name) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, pod := range pods {
		e.waitExec(ctx, pod.Name)
	}
	e.checkVolumes(ctx, e.statefulSetReady(ctx, "keeper"), bindings, sums, "after the kubelets restarted", true)
	recreate("after the kubelets restarted, recreated pods")
}

// checkVolumes checks that each pod has the claim, PV and node recorded in
// bindings and reads the data written before. With samePods, the pods must
// be the very pods recorded, their containers not restarted; otherwise they
// must be new ones, which bindings then records.
func (e *env) checkVolumes(ctx context.Context, pods []*v1.Pod, bindings map[string]binding, sums map[string]string, when string, samePods bool) {
	e.t.Helper()
	for _, pod := range pods {
		b, was := e.bindingOf(ctx, pod), bindings[pod.Name]
		if b.claim != was.claim || b.pv != was.pv || b.node != was.node {
			e.t.Fatalf("%s: %s, was %s", when, b, was)
		}
		if same := b.podUID == was.podUID; same != samePods {
			e.t.Fatalf("%s: pod %s has uid %s, was %s; want the same pod: %v", when, pod.Name, b.podUID, was.podUID, samePods)
		}
		if samePods {
			for _, cs := range pod.Status.ContainerStatuses {
				if cs.RestartCount > 0 {
					e.t.Errorf("%s: container %s of %s restarted %d times", when, cs.Name, pod.Name, cs.RestartCount)
				}
			}
		}
		e.checkBlob(ctx, pod.Name, sums[pod.Name], when)
		bindings[pod.Name] = b
		e.t.Logf("%s: %s reads its blob", when, b)
	}
}

// waitExec waits until kubelet serves exec for the pod again. Right after
// a kubelet restart the API still shows the pod Ready while the new kubelet
// has not yet learnt of it and answers exec with "pod does not exist". No
// object changes when it has, so this polls.
func (e *env) waitExec(ctx context.Context, pod string) {
	e.t.Helper()
	var last error
	err := wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, last = e.Exec(ctx, e.ns, pod, nil, "true")
		return last == nil, nil
	})
	if err != nil {
		e.t.Fatalf("waiting for exec in %s: %v (last error: %v)", pod, err, last)
	}
}

// restartAgents deletes the stickyvol pod of every node and waits for the
// DaemonSet to run a new one on each, registered with kubelet again.
func (e *env) restartAgents(ctx context.Context) {
	e.t.Helper()
	old, err := e.Client.CoreV1().Pods(framework.Namespace).List(ctx, metav1.ListOptions{LabelSelector: framework.AgentPodLabel})
	if err != nil {
		e.t.Fatal(err)
	}
	if len(old.Items) != len(e.Cluster.Nodes()) {
		e.t.Fatalf("%d stickyvol pods for %d nodes", len(old.Items), len(e.Cluster.Nodes()))
	}
	for i := range old.Items {
		e.deletePod(ctx, &old.Items[i])
	}
	if err := e.WaitForDaemonSet(ctx, framework.Namespace, framework.DaemonSetName); err != nil {
		e.t.Fatal(err)
	}
	// kubelet drops the driver from its CSINode when the old pod removes
	// its registration socket and lists it again once the new pod
	// registers. Which state this sees is a race; the pods recreated next
	// tell whether kubelet reaches the new driver.
	if err := e.WaitForDriverRegistered(ctx); err != nil {
		e.t.Fatal(err)
	}
}
