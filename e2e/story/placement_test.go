//go:build e2e

package story

import (
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickyvol/stickyvol/e2e/framework"
)

// TestPodFollowsItsVolume: a StatefulSet pod whose template comes to prefer
// the other node (which has room) is still recreated on its volume's node.
// With that node cordoned the recreated pod stays Pending and the scheduler
// says why (the volume's node affinity); uncordoned, it comes back there
// with its data.
func TestPodFollowsItsVolume(t *testing.T) {
	ctx, e := start(t, 4*time.Minute)
	home := e.Cluster.Nodes()[0].Name
	other := e.otherNode(home)

	e.step("first pod of StatefulSet sticky on %s", home)
	pods := e.createStatefulSet(ctx, statefulSet("sticky", 1, func(sts *appsv1.StatefulSet) {
		sts.Spec.Template.Spec.NodeSelector = map[string]string{hostnameLabel: home}
	}))
	b := e.bindingOf(ctx, pods[0])
	sum := e.writeBlob(ctx, b.pod)
	t.Logf("%s", b)

	e.step("the template now prefers %s; the rolling update recreates the pod", other)
	sts, err := e.Client.AppsV1().StatefulSets(e.ns).Get(ctx, "sticky", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sts.Spec.Template.Spec.NodeSelector = nil
	sts.Spec.Template.Spec.Affinity = &v1.Affinity{NodeAffinity: &v1.NodeAffinity{
		PreferredDuringSchedulingIgnoredDuringExecution: []v1.PreferredSchedulingTerm{{
			Weight: 100,
			Preference: v1.NodeSelectorTerm{MatchExpressions: []v1.NodeSelectorRequirement{{
				Key: hostnameLabel, Operator: v1.NodeSelectorOpIn, Values: []string{other},
			}}},
		}},
	}}
	if _, err := e.Client.AppsV1().StatefulSets(e.ns).Update(ctx, sts, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods = e.statefulSetReady(ctx, "sticky")
	if pods[0].UID == b.podUID {
		t.Fatalf("the rolling update did not recreate %s", b.pod)
	}
	if got := e.bindingOf(ctx, pods[0]); got.node != home || got.pv != b.pv {
		t.Fatalf("recreated pod: %s, want it on %s with PV %s", got, home, b.pv)
	}
	e.checkBlob(ctx, b.pod, sum, "recreated on its volume's node")

	e.step("cordon %s and delete the pod", home)
	e.setCordoned(ctx, home, true)
	t.Cleanup(func() { e.setCordoned(ctx, home, false) })
	e.deletePod(ctx, pods[0])
	pending, err := framework.WaitForOne(ctx, e.Pod(e.ns, b.pod), &v1.Pod{}, func(p *v1.Pod) (bool, error) {
		if p == nil {
			return false, nil
		}
		c := framework.PodCondition(p, v1.PodScheduled)
		return c != nil && c.Status == v1.ConditionFalse && c.Reason == v1.PodReasonUnschedulable, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s to be unschedulable: %v", b.pod, err)
	}
	msg := framework.PodCondition(pending, v1.PodScheduled).Message
	t.Logf("%s is Pending: %s", b.pod, msg)
	// The volume binding plugin's reason for a node its bound PVs exclude
	// (ErrReasonNodeConflict in pkg/scheduler/framework/plugins/volumebinding
	// of Kubernetes 1.37; older releases worded it "had volume node affinity
	// conflict").
	if !strings.Contains(msg, "didn't match PersistentVolume's node affinity") {
		t.Errorf("the scheduler's reason does not name the volume's node affinity: %q", msg)
	}
	if pending.Spec.NodeName != "" || pending.Status.Phase != v1.PodPending {
		t.Errorf("%s is %s on node %q, want Pending on no node", b.pod, pending.Status.Phase, pending.Spec.NodeName)
	}

	e.step("uncordon %s", home)
	e.setCordoned(ctx, home, false)
	back := e.podReady(ctx, b.pod)
	if got := e.bindingOf(ctx, back); got.node != home || got.pv != b.pv {
		t.Fatalf("after uncordon: %s, want it on %s with PV %s", got, home, b.pv)
	}
	e.checkBlob(ctx, b.pod, sum, "after uncordon")
}
