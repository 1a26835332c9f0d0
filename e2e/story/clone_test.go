//go:build e2e

package story

import (
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestClone: a claim whose dataSource is a StatefulSet pod's claim gets a
// copy of that volume, on the source's node: the same checksum, and
// independent afterwards. A clone whose pod is pinned to the other node
// cannot be made there: the claim gets a Warning event naming the source's
// node and no PV, and once its pod is on the source's node, the clone is
// made there.
func TestClone(t *testing.T) {
	ctx, e := start(t, 4*time.Minute)
	src := e.createStatefulSet(ctx, statefulSet("src", 1))[0]
	sb := e.bindingOf(ctx, src)
	sum := e.writeBlob(ctx, src.Name)
	cloneOf := func(name string) v1.PersistentVolumeClaim {
		c := claim(name, "32Mi", v1.ReadWriteOnce)
		c.Spec.DataSource = &v1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: sb.claim}
		return c
	}

	e.step("a clone of %s with its pod on %s: the same data", sb.claim, sb.node)
	e.createClaim(ctx, cloneOf("copy"))
	e.createPod(ctx, "copy", "copy", onNode(sb.node))
	cb := e.bindingOf(ctx, e.podReady(ctx, "copy"))
	if cb.node != sb.node || cb.pv == sb.pv {
		t.Fatalf("clone %s, want a PV of its own on %s", cb, sb.node)
	}
	e.checkBlob(ctx, "copy", sum, "in the clone")
	e.step("independent: a new blob in the clone leaves the source as it was")
	if e.writeBlob(ctx, "copy") == sum {
		t.Fatal("the new blob has the old checksum")
	}
	e.checkBlob(ctx, src.Name, sum, "in the source after the clone changed")

	other := e.otherNode(sb.node)
	e.step("a clone with its pod pinned to %s: refused there, naming %s", other, sb.node)
	e.createClaim(ctx, cloneOf("stray"))
	e.createPod(ctx, "stray", "stray", onNode(other))
	ev, err := e.WaitForEvent(ctx, e.ns, "PersistentVolumeClaim", "stray", func(ev *v1.Event) bool {
		return ev.Type == v1.EventTypeWarning && strings.Contains(ev.Message, "whose volume is on node "+sb.node)
	})
	if err != nil {
		t.Fatalf("no Warning event naming the source's node: %v", err)
	}
	t.Logf("refused: %s", ev.Message)
	if c, err := e.Client.CoreV1().PersistentVolumeClaims(e.ns).Get(ctx, "stray", metav1.GetOptions{}); err != nil || c.Spec.VolumeName != "" {
		t.Errorf("claim stray: %v, volume %q; want no volume on %s", err, c.Spec.VolumeName, other)
	}
	e.step("its pod moved to %s: the clone is made there", sb.node)
	stray, err := e.Client.CoreV1().Pods(e.ns).Get(ctx, "stray", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.deletePod(ctx, stray)
	e.createPod(ctx, "stray", "stray", onNode(sb.node))
	if b := e.bindingOf(ctx, e.podReady(ctx, "stray")); b.node != sb.node {
		t.Errorf("clone %s, want it on %s", b, sb.node)
	}
	e.checkBlob(ctx, "stray", sum, "in the clone made on the source's node")
}
