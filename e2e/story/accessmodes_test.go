//go:build e2e

package story

import (
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// TestRefusedAccessModes applies the example claims that ask for
// ReadWriteMany and ReadOnlyMany, each with a pod: each claim gets a Warning
// event that says why, and no PV; no directory appears on any node.
func TestRefusedAccessModes(t *testing.T) {
	ctx, e := start(t, 3*time.Minute)
	dirsBefore := e.volumeDirs()
	for _, x := range []struct{ file, claim, mode string }{
		{"deploy/examples/claims/refused-rwx.yaml", "shared-rwx", "ReadWriteMany"},
		{"deploy/examples/claims/refused-rox.yaml", "shared-rox", "ReadOnlyMany"},
	} {
		e.step("apply %s", x.file)
		if _, err := e.ApplyFile(ctx, e.ns, x.file); err != nil {
			t.Fatal(err)
		}
		ev, err := e.WaitForEvent(ctx, e.ns, "PersistentVolumeClaim", x.claim, func(ev *v1.Event) bool {
			return ev.Type == v1.EventTypeWarning && ev.Reason == "ProvisioningFailed"
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("claim %s: %s %s: %s", x.claim, ev.Type, ev.Reason, ev.Message)
		if !strings.Contains(ev.Message, x.mode) {
			t.Errorf("the event on %s does not name the refused access mode %s: %q", x.claim, x.mode, ev.Message)
		}
		c, err := e.Client.CoreV1().PersistentVolumeClaims(e.ns).Get(ctx, x.claim, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if c.Status.Phase != v1.ClaimPending || c.Spec.VolumeName != "" {
			t.Errorf("claim %s is %s with volume %q, want Pending without one", x.claim, c.Status.Phase, c.Spec.VolumeName)
		}
	}
	pvs, err := e.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, pv := range pvs.Items {
		if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == e.ns {
			t.Errorf("PV %s was made for the refused claim %s", pv.Name, ref.Name)
		}
	}
	for dir := range e.volumeDirs() {
		if !dirsBefore[dir] {
			t.Errorf("%s appeared on the host for a refused claim", dir)
		}
	}
}

// TestReadWriteOncePod applies the example with two pods on one
// ReadWriteOncePod claim: one runs, the other stays Pending with the
// scheduler saying why, and it starts, with the first one's data, once the
// first is deleted.
func TestReadWriteOncePod(t *testing.T) {
	ctx, e := start(t, 3*time.Minute)
	const file = "deploy/examples/claims/rwop.yaml"
	e.step("apply %s", file)
	if _, err := e.ApplyFile(ctx, e.ns, file); err != nil {
		t.Fatal(err)
	}
	var running, waiting *v1.Pod
	_, err := framework.WaitFor(ctx, e.Pods(e.ns, nil), &v1.Pod{}, func(pods []*v1.Pod) (bool, error) {
		running, waiting = nil, nil
		for _, p := range pods {
			if framework.PodReady(p) {
				running = p
			} else if c := framework.PodCondition(p, v1.PodScheduled); c != nil && c.Reason == v1.PodReasonUnschedulable {
				waiting = p
			}
		}
		return running != nil && waiting != nil, nil
	})
	if err != nil {
		t.Fatalf("waiting for one pod running and one unschedulable: %v", err)
	}
	msg := framework.PodCondition(waiting, v1.PodScheduled).Message
	t.Logf("%s runs on %s; %s is Pending: %s", running.Name, running.Spec.NodeName, waiting.Name, msg)
	if !strings.Contains(msg, "ReadWriteOncePod") {
		t.Errorf("the scheduler's reason for %s does not name ReadWriteOncePod: %q", waiting.Name, msg)
	}
	b := e.bindingOf(ctx, running)
	sum := e.writeBlob(ctx, running.Name)

	e.step("delete %s", running.Name)
	e.deletePod(ctx, running)
	next := e.podReady(ctx, waiting.Name)
	if got := e.bindingOf(ctx, next); got.pv != b.pv || got.node != b.node {
		t.Fatalf("%s, want PV %s on %s", got, b.pv, b.node)
	}
	e.checkBlob(ctx, next.Name, sum, "the second pod on the ReadWriteOncePod claim")
}
