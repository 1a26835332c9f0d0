package framework

import (
	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// FakeNodeLabel selects the cluster's kwok nodes (type=kwok).
const FakeNodeLabel = "type"

// OnFakeNodes puts a StatefulSet's pods on kwok's fake nodes (kwok marks
// them Running; no container runs) and makes its first claim template ask
// for 1Mi, so that hundreds of claims fit any node's capacity.
func OnFakeNodes(sts *appsv1.StatefulSet) {
	spec := &sts.Spec.Template.Spec
	spec.NodeSelector = map[string]string{FakeNodeLabel: "kwok"}
	spec.Tolerations = []v1.Toleration{{Key: "kwok.x-k8s.io/node", Operator: v1.TolerationOpExists, Effect: v1.TaintEffectNoSchedule}}
	sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[v1.ResourceStorage] = resource.MustParse("1Mi")
}
