package deploy_test

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2/ktesting"
)

func node(name string, labels map[string]string, taints ...corev1.Taint) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Spec: corev1.NodeSpec{Taints: taints}}
}

// runsOn decides whether the DaemonSet controller puts the agent on n, with
// the helpers it uses itself: required node affinity, then the NoSchedule
// and NoExecute taints the pod does not tolerate.
func runsOn(t *testing.T, ds *appsv1.DaemonSet, n *corev1.Node) bool {
	t.Helper()
	pod := &corev1.Pod{Spec: ds.Spec.Template.Spec}
	fits, err := nodeaffinity.GetRequiredNodeAffinity(pod).Match(n)
	if err != nil {
		t.Fatalf("node affinity: %v", err)
	}
	logger, _ := ktesting.NewTestContext(t)
	_, untolerated := corev1helpers.FindMatchingUntoleratedTaint(logger, n.Spec.Taints, pod.Spec.Tolerations,
		func(taint *corev1.Taint) bool {
			return taint.Effect == corev1.TaintEffectNoSchedule || taint.Effect == corev1.TaintEffectNoExecute
		}, false)
	return fits && !untolerated
}

func TestDaemonSetRunsOnEveryRealNode(t *testing.T) {
	taint := func(key string, effect corev1.TaintEffect) corev1.Taint {
		return corev1.Taint{Key: key, Effect: effect}
	}
	worker := map[string]string{corev1.LabelHostname: "n"}
	kwok := map[string]string{corev1.LabelHostname: "fake-1", "type": "kwok"}
	for _, tc := range []struct {
		node *corev1.Node
		want map[string]bool // by overlay; a missing overlay is not checked
	}{
		{node("worker", worker), map[string]bool{"overlays/kind": true, "overlays/local": true}},
		{node("control-plane", worker, taint("node-role.kubernetes.io/control-plane", corev1.TaintEffectNoSchedule)),
			map[string]bool{"overlays/kind": true, "overlays/local": true}},
		// A cordoned node's pods still need their volumes published.
		{node("cordoned", worker, taint(corev1.TaintNodeUnschedulable, corev1.TaintEffectNoSchedule)),
			map[string]bool{"overlays/kind": true, "overlays/local": true}},
		{node("disk-pressure", worker, taint(corev1.TaintNodeDiskPressure, corev1.TaintEffectNoSchedule)),
			map[string]bool{"overlays/kind": true, "overlays/local": true}},
		{node("custom-taint", worker, corev1.Taint{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoExecute}),
			map[string]bool{"overlays/kind": true, "overlays/local": true}},
		// kwok's fake nodes have no kubelet: nothing to serve there.
		{node("kwok", kwok, corev1.Taint{Key: "kwok.x-k8s.io/node", Value: "fake", Effect: corev1.TaintEffectNoSchedule}),
			map[string]bool{"overlays/local": false}},
	} {
		for dir, want := range tc.want {
			ds := get[*appsv1.DaemonSet](t, render(t, dir), agentName)
			if got := runsOn(t, ds, tc.node); got != want {
				t.Errorf("%s: agent on node %s = %v, want %v", dir, tc.node.Name, got, want)
			}
		}
	}
}
