//go:build e2e

package story

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// TestCapacity: every node's agent runs with --capacity=nodeCapacity. One
// node is filled up to a sliver; a claim that does not fit there but fits
// the other node ends up there, also when the scheduler first picks the
// full node: that node's agent refuses it (ResourceExhausted), the claim goes
// back to the scheduler, which picks again. A claim bigger than any node's
// capacity stays Pending, and its events say that the node has no room.
//
// The scheduler does not know the nodes' room (stickyvol publishes no
// CSIStorageCapacity yet), so to make its first pick the full node, the
// other node is cordoned until the full node has refused the claim once.
func TestCapacity(t *testing.T) {
	ctx, e := start(t, 3*time.Minute)
	e.step("room on each node, once earlier scenarios' volumes are gone")
	free := e.freeRoom(ctx)
	full := e.Cluster.Nodes()[0].Name
	other := e.otherNode(full)
	const sliver = 8 << 20
	const big = 64 << 20
	t.Logf("room: %v", free)
	if free[full] <= sliver || free[other] < big {
		t.Fatalf("not enough room to start with: %v", free)
	}

	e.step("fill %s up to %s", full, quantity(sliver))
	e.createClaim(ctx, claim("filler", quantity(free[full]-sliver), v1.ReadWriteOnce))
	e.createPod(ctx, "filler", "filler", onNode(full))
	filler := e.bindingOf(ctx, e.podReady(ctx, "filler"))
	if filler.node != full {
		t.Fatalf("filler: %s, want node %s", filler, full)
	}
	// The next scenarios need the room back, not just once the namespace
	// is gone.
	t.Cleanup(func() {
		// Also when the scenario ran out of time.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		e.deleteClaimAndPod(ctx, filler)
		e.waitVolume(ctx, filler.pv, func(pv *v1.PersistentVolume) bool { return pv == nil }, "deleted")
	})

	e.step("claim %s with %s cordoned: %s refuses it", quantity(big), other, full)
	e.setCordoned(ctx, other, true)
	t.Cleanup(func() { e.setCordoned(ctx, other, false) })
	e.createClaim(ctx, claim("big", quantity(big), v1.ReadWriteOnce))
	e.createPod(ctx, "big", "big")
	e.waitNoRoom(ctx, "big", full)

	e.step("uncordon %s: the claim goes there", other)
	e.setCordoned(ctx, other, false)
	b := e.bindingOf(ctx, e.podReady(ctx, "big"))
	if b.node != other {
		t.Fatalf("%s, want node %s", b, other)
	}
	t.Logf("%s", b)

	e.step("a claim bigger than any node (%s)", quantity(2*capacityBytes()))
	e.createClaim(ctx, claim("huge", quantity(2*capacityBytes()), v1.ReadWriteOnce))
	e.createPod(ctx, "huge", "huge")
	ev := e.waitNoRoom(ctx, "huge", "")
	c, err := e.Client.CoreV1().PersistentVolumeClaims(e.ns).Get(ctx, "huge", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Status.Phase != v1.ClaimPending || c.Spec.VolumeName != "" {
		t.Errorf("claim huge is %s with volume %q, want Pending without one", c.Status.Phase, c.Spec.VolumeName)
	}
	pod, err := e.Client.CoreV1().Pods(e.ns).Get(ctx, "huge", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Status.Phase != v1.PodPending {
		t.Errorf("pod huge is %s, want Pending", pod.Status.Phase)
	}
	t.Logf("claim huge stays Pending: %s", ev.Message)
}

// waitNoRoom waits for the Warning event that says a node (node, or any when
// empty) has no room for the claim, and returns it.
func (e *env) waitNoRoom(ctx context.Context, claimName, node string) *v1.Event {
	e.t.Helper()
	// The refusal comes seconds after the scheduler picks the node.
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	want := "has no room for this volume"
	if node != "" {
		want = fmt.Sprintf("node %q has no room for this volume", node)
	}
	ev, err := e.WaitForEvent(ctx, e.ns, "PersistentVolumeClaim", claimName, func(ev *v1.Event) bool {
		return ev.Type == v1.EventTypeWarning && ev.Reason == "ProvisioningFailed" && strings.Contains(ev.Message, want)
	})
	if err != nil {
		e.t.Fatalf("waiting for %q on claim %s: %v", want, claimName, err)
	}
	e.t.Logf("claim %s: %s %s: %s", claimName, ev.Type, ev.Reason, ev.Message)
	return ev
}

// freeRoom returns how many bytes each node's agent can still hand out:
// nodeCapacity less the capacity of the stickyvol PVs on it. It first waits
// until no PV is on its way out, including those whose claims are in the
// namespaces of earlier scenarios still being deleted, so that the numbers
// hold.
func (e *env) freeRoom(ctx context.Context) map[string]int64 {
	e.t.Helper()
	pvs, err := framework.WaitFor(ctx, e.Volumes(), &v1.PersistentVolume{}, func(pvs []*v1.PersistentVolume) (bool, error) {
		for _, pv := range pvs {
			leaving := pv.DeletionTimestamp != nil ||
				(pv.Status.Phase == v1.VolumeReleased && pv.Spec.PersistentVolumeReclaimPolicy == v1.PersistentVolumeReclaimDelete)
			if ref := pv.Spec.ClaimRef; !leaving && ref != nil && ref.Namespace != e.ns && strings.HasPrefix(ref.Namespace, "e2e-") {
				ns, err := e.Client.CoreV1().Namespaces().Get(ctx, ref.Namespace, metav1.GetOptions{})
				leaving = apierrors.IsNotFound(err) || (err == nil && ns.DeletionTimestamp != nil)
			}
			if leaving {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		e.t.Fatalf("waiting for deleted claims' PVs to go: %v", err)
	}
	free := map[string]int64{}
	for _, n := range e.Cluster.Nodes() {
		free[n.Name] = capacityBytes()
	}
	for _, pv := range pvs {
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != framework.DriverName {
			continue
		}
		size := pv.Spec.Capacity[v1.ResourceStorage]
		for _, n := range framework.NodesOf(pv) {
			free[n] -= size.Value()
		}
	}
	return free
}

func capacityBytes() int64 {
	q := resource.MustParse(nodeCapacity)
	return q.Value()
}

// quantity writes bytes as a claim size.
func quantity(bytes int64) string {
	return resource.NewQuantity(bytes, resource.BinarySI).String()
}
