//go:build e2e

package story

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestScaleDownUpKeepsClaims scales a StatefulSet 3 -> 1 -> 3: the claims of
// the removed pods stay Bound to their PVs while the pods are gone, and the
// pods that come back find them, on the same nodes, with their data.
func TestScaleDownUpKeepsClaims(t *testing.T) {
	ctx, e := start(t, 4*time.Minute)
	pods := e.createStatefulSet(ctx, statefulSet("scaled", 3, spread))
	before := map[string]binding{}
	sums := map[string]string{}
	for _, pod := range pods {
		b := e.bindingOf(ctx, pod)
		before[pod.Name], sums[pod.Name] = b, e.writeBlob(ctx, pod.Name)
		t.Logf("%s", b)
	}

	e.step("scale to 1")
	pods = e.scale(ctx, "scaled", 1)
	if len(pods) != 1 || pods[0].Name != "scaled-0" {
		t.Fatalf("after scaling to 1 the pods are %v, want [scaled-0]", podNames(pods))
	}
	for _, name := range []string{"scaled-1", "scaled-2"} {
		b := before[name]
		c, err := e.Client.CoreV1().PersistentVolumeClaims(e.ns).Get(ctx, b.claim, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("claim %s of the removed pod %s: %v", b.claim, name, err)
		}
		if c.Status.Phase != v1.ClaimBound || c.Spec.VolumeName != b.pv {
			t.Errorf("claim %s is %s on PV %q, want Bound on %s", b.claim, c.Status.Phase, c.Spec.VolumeName, b.pv)
		}
		pv, err := e.Client.CoreV1().PersistentVolumes().Get(ctx, b.pv, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("PV %s of claim %s: %v", b.pv, b.claim, err)
		}
		if pv.Status.Phase != v1.VolumeBound {
			t.Errorf("PV %s is %s, want Bound", b.pv, pv.Status.Phase)
		}
		t.Logf("pod %s is gone; claim %s stays %s on PV %s", name, b.claim, c.Status.Phase, b.pv)
	}

	e.step("scale to 3")
	pods = e.scale(ctx, "scaled", 3)
	e.checkVolumes(ctx, pods[:1], before, sums, "after scaling 3 -> 1 -> 3, the pod that stayed", true)
	e.checkVolumes(ctx, pods[1:], before, sums, "after scaling 3 -> 1 -> 3, the pods that came back", false)
}

func podNames(pods []*v1.Pod) []string {
	var names []string
	for _, p := range pods {
		names = append(names, p.Name)
	}
	return names
}
