//go:build e2e

package story

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// The chaos scenarios break things while stickyvol works and end in one
// audit (framework.Audit): every claim Bound to exactly one PV, every PV's
// volume on its node, no volume or record without a PV, and where pods wrote
// data, every checksum intact. `make test` runs each once with small counts;
// `make chaos` sets STICKYVOL_CHAOS=full for the full ones. Volumes at scale
// live on kwok's fake nodes, each served by a `stickyvol node` host process
// (framework.HostAgents), which a scenario can kill -9 at will.
const envChaos = "STICKYVOL_CHAOS"

// chaosCounts sizes the scenarios.
type chaosCounts struct {
	// claims of the StatefulSet scaled up while agents are killed.
	claims int
	// kills of an agent during the scale-up, and again during deletion.
	kills int
	// restarts of kube-apiserver and etcd during provisioning.
	restarts int
	// cycles of deleting both pods of a StatefulSet on the real nodes.
	cycles int
}

func counts() chaosCounts {
	if os.Getenv(envChaos) == "full" {
		return chaosCounts{claims: 300, kills: 10, restarts: 3, cycles: 100}
	}
	return chaosCounts{claims: 40, kills: 3, restarts: 1, cycles: 3}
}

// chaosRow is one line of the table printed at the end of the suite.
type chaosRow struct {
	scenario                     string
	claims, faults               int
	orphans, duplicates, badSums int
	took                         time.Duration
}

// TestChaosAgentKilled kills a fake node's agent with SIGKILL at random
// moments while a Parallel StatefulSet on the fake nodes gets its claims,
// each time starting it again as kubelet would restart a crashed container;
// then again while the claims are deleted. Nothing may be lost, doubled or
// left behind.
func TestChaosAgentKilled(t *testing.T) {
	n := counts()
	ctx, e := start(t, 15*time.Minute)
	agents := e.hostAgents(ctx)

	e.step("a StatefulSet of %d claims on %d fake nodes; %d agent kills meanwhile", n.claims, len(agents.Roots), n.kills)
	killed := e.killAgents(ctx, agents, n.kills)
	e.createStatefulSetNoWait(ctx, statefulSet("chaos", int32(n.claims), framework.OnFakeNodes))
	e.waitClaimsBound(ctx, n.claims)
	faults := <-killed
	up := e.audit(ctx, agents.Roots, "after the scale-up")

	e.step("delete the StatefulSet and its claims; %d agent kills meanwhile", n.kills)
	killed = e.killAgents(ctx, agents, n.kills)
	e.deleteAllAndWait(ctx)
	faults += <-killed
	down := e.audit(ctx, agents.Roots, "after the deletion")
	if down.Volumes != 0 {
		t.Errorf("%d volumes left on the fake nodes after every claim was deleted", down.Volumes)
	}
	e.record(chaosRow{claims: n.claims, faults: faults, orphans: len(up.Orphans) + len(down.Orphans),
		duplicates: len(up.Duplicates) + len(down.Duplicates)})
}

// TestChaosControlPlaneRestart restarts kube-apiserver and etcd while claims
// on the fake nodes are being provisioned. The agents (host processes and
// the pods on the real nodes) and the controller must ride it out: no
// restart, every claim Bound afterwards.
func TestChaosControlPlaneRestart(t *testing.T) {
	n := counts()
	ctx, e := start(t, 10*time.Minute)
	agents := e.hostAgents(ctx)
	pids := map[string]int{}
	for _, node := range agents.Nodes() {
		pids[node], _ = agents.Running(node)
	}
	restartsBefore := e.stickyvolRestarts(ctx)

	claims := max(n.claims/2, 20)
	e.step("a StatefulSet of %d claims on the fake nodes; kube-apiserver and etcd restarted %d times meanwhile", claims, n.restarts)
	e.createStatefulSetNoWait(ctx, statefulSet("outage", int32(claims), framework.OnFakeNodes))
	for i := range n.restarts {
		time.Sleep(time.Duration(500+rand.IntN(1500)) * time.Millisecond)
		began := time.Now()
		if err := e.Cluster.RestartControlPlane(ctx); err != nil {
			t.Fatal(err)
		}
		e.step("restart %d: the API server answers again after %s", i+1, time.Since(began).Round(100*time.Millisecond))
	}
	e.waitClaimsBound(ctx, claims)
	report := e.audit(ctx, agents.Roots, "after the restarts")
	for node, pid := range pids {
		if now, running := agents.Running(node); !running || now != pid {
			t.Errorf("the agent of %s was pid %d, is now pid %d (running %v): it did not ride out the outage", node, pid, now, running)
		}
	}
	if after := e.stickyvolRestarts(ctx); !maps.Equal(after, restartsBefore) {
		t.Errorf("stickyvol pods restarted during the outage: before %v, after %v", restartsBefore, after)
	}
	e.deleteAllAndWait(ctx)
	e.audit(ctx, agents.Roots, "after the deletion")
	e.record(chaosRow{claims: claims, faults: n.restarts, orphans: len(report.Orphans), duplicates: len(report.Duplicates)})
}

// TestChaosPodCycles deletes both pods of a StatefulSet on the two real
// nodes again and again: each comes back on its node, with its own volume
// and the data it wrote.
func TestChaosPodCycles(t *testing.T) {
	n := counts()
	ctx, e := start(t, time.Duration(2+n.cycles/4)*time.Minute)
	pods := e.createStatefulSet(ctx, statefulSet("cycled", 2, onePerNode))
	sums, bindings := map[string]string{}, map[string]binding{}
	for _, p := range pods {
		sums[p.Name], bindings[p.Name] = e.writeBlob(ctx, p.Name), e.bindingOf(ctx, p)
	}
	e.step("%d cycles: both pods deleted, recreated, checked", n.cycles)
	badSums := 0
	for i := range n.cycles {
		for _, p := range pods {
			if err := e.Client.CoreV1().Pods(e.ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range pods {
			if err := e.WaitForPodGone(ctx, e.ns, p.Name, string(p.UID)); err != nil {
				t.Fatal(err)
			}
		}
		pods = e.statefulSetReady(ctx, "cycled")
		for _, p := range pods {
			if b := e.bindingOf(ctx, p); b.pv != bindings[p.Name].pv || b.node != bindings[p.Name].node {
				t.Errorf("cycle %d: %s now %s, was %s", i+1, p.Name, b, bindings[p.Name])
			}
			if got := e.readBlob(ctx, p.Name); got != sums[p.Name] {
				badSums++
				t.Errorf("cycle %d: %s reads sha256 %s, wrote %s", i+1, p.Name, got, sums[p.Name])
			}
		}
	}
	report := e.audit(ctx, e.realRoots(), "after the cycles")
	e.record(chaosRow{claims: 2, faults: 2 * n.cycles, orphans: len(report.Orphans), duplicates: len(report.Duplicates), badSums: badSums})
}

// TestChaosDataRootMishaps starts a second agent on a live data root, which
// must refuse to start and leave the first serving; then plants a corrupt
// record, which sets that one volume aside (Warning event on its PV) while
// the agent serves the others, until the record is mended.
func TestChaosDataRootMishaps(t *testing.T) {
	ctx, e := start(t, 5*time.Minute)
	agents := e.hostAgents(ctx)
	node := slices.Min(agents.Nodes())
	root := agents.Roots[node]
	pinned := func(sts *appsv1.StatefulSet) {
		framework.OnFakeNodes(sts)
		sts.Spec.Template.Spec.NodeSelector = map[string]string{hostnameLabel: node}
	}
	e.createStatefulSet(ctx, statefulSet("pinned", 2, pinned))
	e.waitClaimsBound(ctx, 2)

	e.step("a second agent on %s's live data root", node)
	pid, _ := agents.Running(node)
	second, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(second, e.agentBinary(), "node", "--node-name="+node+"-twin",
		"--kubeconfig="+e.Cluster.Kubeconfig(), "--data-root="+root, "--kubelet-root="+t.TempDir(),
		"--register-with-kubelet=false", "--metrics-address=").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use by another stickyvol agent") || !strings.Contains(string(out), node) {
		t.Errorf("second agent on a live data root: %v\n%s\nwant a refusal naming the holder %s", err, out, node)
	}
	if now, running := agents.Running(node); !running || now != pid {
		t.Errorf("the first agent of %s stopped (pid %d, now %d)", node, pid, now)
	}

	e.step("a corrupt record planted on %s while its agent is down", node)
	claim, err := e.Client.CoreV1().PersistentVolumeClaims(e.ns).Get(ctx, "data-pinned-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pv := claim.Spec.VolumeName
	record := filepath.Join(root, "meta", pv+".json")
	good, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	if err := agents.Kill(node); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(record, []byte(`{"id": "`+pv+`", "capacity`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := agents.Start(ctx, node); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForEvent(ctx, "", "PersistentVolume", pv, func(ev *v1.Event) bool {
		return ev.Type == v1.EventTypeWarning && ev.Reason == "VolumeUnavailable"
	}); err != nil {
		t.Fatalf("no VolumeUnavailable event on PV %s: %v\n%s", pv, err, agents.LogTail(node, 20))
	}
	aside, _ := filepath.Glob(record + ".corrupt-*")
	if len(aside) != 1 {
		t.Fatalf("set-aside records %v, want one beside %s", aside, record)
	}
	e.step("the agent still serves %s's other volumes: a new claim there", node)
	e.scale(ctx, "pinned", 3)
	e.waitClaimsBound(ctx, 3)

	e.step("the record mended and the agent restarted: the volume is served again")
	if err := agents.Kill(node); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(record, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(aside[0]); err != nil {
		t.Fatal(err)
	}
	if err := agents.Start(ctx, node); err != nil {
		t.Fatal(err)
	}
	report := e.audit(ctx, agents.Roots, "after mending")
	e.deleteAllAndWait(ctx)
	e.audit(ctx, agents.Roots, "after the deletion")
	e.record(chaosRow{claims: 3, faults: 2, orphans: len(report.Orphans), duplicates: len(report.Duplicates)})
}

// hostAgents starts an agent for each fake node and stops them when the
// scenario ends (after its claims are gone: a Released PV needs its agent),
// taking the driver off the fake nodes' CSINodes so that no other scenario
// places a claim there.
func (e *env) hostAgents(ctx context.Context) *framework.HostAgents {
	e.t.Helper()
	agents, err := e.StartHostAgents(ctx, e.agentBinary(), "--capacity=50Gi")
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		e.deleteAllAndWait(context.WithoutCancel(ctx))
		if err := agents.Stop(context.WithoutCancel(ctx)); err != nil {
			e.t.Errorf("stopping the host agents: %v", err)
		}
	})
	return agents
}

func (e *env) agentBinary() string { return framework.AgentBinary(suite.cacheDir) }

// realRoots maps each real node to its data root on the host.
func (e *env) realRoots() map[string]string {
	roots := map[string]string{}
	for _, n := range e.Cluster.Nodes() {
		roots[n.Name] = n.DataDir
	}
	return roots
}

// killAgents kills a random agent with SIGKILL `kills` times, at random
// moments a few hundred milliseconds apart, starting it again each time
// after a random pause. It sends the number of kills done when finished.
func (e *env) killAgents(ctx context.Context, agents *framework.HostAgents, kills int) <-chan int {
	done := make(chan int, 1)
	nodes := agents.Nodes()
	go func() {
		n := 0
		defer func() { done <- n }()
		for range kills {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(200+rand.IntN(1300)) * time.Millisecond):
			}
			node := nodes[rand.IntN(len(nodes))]
			if err := agents.Kill(node); err != nil {
				e.t.Errorf("kill -9 of the agent of %s: %v", node, err)
				return
			}
			n++
			time.Sleep(time.Duration(rand.IntN(500)) * time.Millisecond)
			if err := agents.Start(ctx, node); err != nil {
				e.t.Errorf("starting the agent of %s again: %v", node, err)
				return
			}
		}
	}()
	return done
}

// waitClaimsBound waits until the scenario's namespace has want claims, all
// Bound.
func (e *env) waitClaimsBound(ctx context.Context, want int) {
	e.t.Helper()
	began := time.Now()
	_, err := framework.WaitFor(ctx, e.Claims(e.ns), &v1.PersistentVolumeClaim{}, func(claims []*v1.PersistentVolumeClaim) (bool, error) {
		bound := 0
		for _, c := range claims {
			if c.Status.Phase == v1.ClaimBound {
				bound++
			}
		}
		return bound == want && len(claims) == want, nil
	})
	if err != nil {
		e.t.Fatalf("waiting for %d claims Bound: %v", want, err)
	}
	e.step("%d claims Bound in %s", want, time.Since(began).Round(100*time.Millisecond))
}

// deleteAllAndWait deletes the scenario's StatefulSets and claims and waits
// until they, their pods and the PVs of those claims are gone: after it,
// nothing of the scenario is in flight. The StatefulSets go in the
// foreground, so that the StatefulSet controller sees them terminating and
// makes no pod or claim anew while they go: a controller still catching up
// (after the control-plane restart, say) recreated a claim that an agent
// then began to provision just as the scenario stopped its agents, which
// left that volume behind for the next scenario's audit to find.
func (e *env) deleteAllAndWait(ctx context.Context) {
	e.t.Helper()
	foreground := metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationForeground)}
	if err := e.Client.AppsV1().StatefulSets(e.ns).DeleteCollection(ctx, foreground, metav1.ListOptions{}); err != nil {
		e.t.Fatal(err)
	}
	began := time.Now()
	if _, err := framework.WaitFor(ctx, e.StatefulSet(e.ns, ""), &appsv1.StatefulSet{}, func(sets []*appsv1.StatefulSet) (bool, error) {
		return len(sets) == 0, nil
	}); err != nil {
		e.t.Fatalf("waiting for the StatefulSets of %s to go: %v", e.ns, err)
	}
	if err := e.Client.CoreV1().PersistentVolumeClaims(e.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		e.t.Fatal(err)
	}
	if _, err := framework.WaitFor(ctx, e.Claims(e.ns), &v1.PersistentVolumeClaim{}, func(claims []*v1.PersistentVolumeClaim) (bool, error) {
		return len(claims) == 0, nil
	}); err != nil {
		e.t.Fatalf("waiting for the claims of %s to go: %v", e.ns, err)
	}
	_, err := framework.WaitFor(ctx, e.Volumes(), &v1.PersistentVolume{}, func(pvs []*v1.PersistentVolume) (bool, error) {
		return !slices.ContainsFunc(pvs, func(pv *v1.PersistentVolume) bool {
			return pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.Namespace == e.ns
		}), nil
	})
	if err != nil {
		e.t.Fatalf("waiting for the PVs of %s to go: %v", e.ns, err)
	}
	e.step("StatefulSets, claims and their PVs gone in %s", time.Since(began).Round(100*time.Millisecond))
}

// audit runs framework.Audit on the scenario's namespace and fails the
// scenario on any finding but the orphan volumes named in expected (IDs),
// which it logs and leaves out of the report it returns.
func (e *env) audit(ctx context.Context, roots map[string]string, when string, expected ...string) framework.AuditReport {
	e.t.Helper()
	r, err := e.Audit(ctx, []string{e.ns}, roots)
	if err != nil {
		e.t.Fatalf("audit %s: %v", when, err)
	}
	e.step("audit %s: %s", when, r)
	r.Orphans = slices.DeleteFunc(r.Orphans, func(o string) bool {
		if slices.ContainsFunc(expected, func(id string) bool { return strings.Contains(o, id) }) {
			e.t.Logf("audit %s: orphan %s: expected", when, o)
			return true
		}
		return false
	})
	for _, p := range r.Problems() {
		e.t.Errorf("audit %s: %s", when, p)
	}
	return r
}

// stickyvolRestarts maps each stickyvol pod (agents and controllers) to its
// containers' restart count.
func (e *env) stickyvolRestarts(ctx context.Context) map[string]int32 {
	e.t.Helper()
	pods, err := e.Client.CoreV1().Pods(framework.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int32{}
	for _, p := range pods.Items {
		for _, s := range p.Status.ContainerStatuses {
			out[p.Name] += s.RestartCount
		}
	}
	return out
}

// record adds the scenario's row to the chaos table.
func (e *env) record(row chaosRow) {
	row.scenario = strings.TrimPrefix(strings.TrimPrefix(e.t.Name(), "TestChaos"), "Test")
	row.took = time.Since(e.begin)
	suite.mu.Lock()
	defer suite.mu.Unlock()
	suite.chaos = append(suite.chaos, row)
}

// printChaos prints the chaos table.
func printChaos() {
	if len(suite.chaos) == 0 {
		return
	}
	fmt.Fprintf(os.Stderr, "\nchaos (%s=%q):\n", envChaos, os.Getenv(envChaos))
	fmt.Fprintf(os.Stderr, "%-20s %7s %7s %8s %11s %10s %8s\n", "scenario", "claims", "faults", "orphans", "duplicates", "bad sums", "time")
	for _, r := range suite.chaos {
		fmt.Fprintf(os.Stderr, "%-20s %7d %7d %8d %11d %10d %8s\n", r.scenario, r.claims, r.faults, r.orphans, r.duplicates, r.badSums, r.took.Round(time.Second))
	}
}
