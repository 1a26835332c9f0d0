package duties

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
)

func TestPickNode(t *testing.T) {
	for _, tc := range []struct {
		name       string
		candidates []nodeLoad
		refused    []string
		want       string
	}{
		{"fewest volumes", []nodeLoad{{name: "a", load: 3}, {name: "b", load: 1}, {name: "c", load: 2}}, nil, "b"},
		{"known room wins a tie", []nodeLoad{{name: "a", load: 1}, {name: "b", load: 1, known: true}}, nil, "b"},
		{"name breaks a tie", []nodeLoad{{name: "b", load: 1}, {name: "a", load: 1}}, nil, "a"},
		{"refused skipped", []nodeLoad{{name: "a", load: 0}, {name: "b", load: 5}}, []string{"a"}, "b"},
		{"all refused", []nodeLoad{{name: "a", load: 0}}, []string{"a"}, ""},
		{"none", nil, nil, ""},
	} {
		got, ok := pickNode(tc.candidates, sets.New(tc.refused...))
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("%s: got %q %v, want %q", tc.name, got, ok, tc.want)
		}
	}
}

func TestNodeUsable(t *testing.T) {
	const driver = "hostpath.stickyvol.dev"
	registered := &storagev1.CSINode{Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: "other"}, {Name: driver}}}}
	otherOnly := &storagev1.CSINode{Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: "other"}}}}
	cordoned := readyNode("a", nil)
	cordoned.Spec.Unschedulable = true
	notReady := readyNode("a", nil)
	notReady.Status.Conditions[0].Status = v1.ConditionFalse

	for _, tc := range []struct {
		name    string
		node    *v1.Node
		csiNode *storagev1.CSINode
		want    bool
	}{
		{"ready and registered", readyNode("a", nil), registered, true},
		{"driver not registered", readyNode("a", nil), otherOnly, false},
		{"no CSINode", readyNode("a", nil), nil, false},
		{"cordoned", cordoned, registered, false},
		{"not ready", notReady, registered, false},
		{"no conditions", &v1.Node{}, registered, false},
	} {
		if got := nodeUsable(tc.node, tc.csiNode, driver); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestAllowedByClass(t *testing.T) {
	class := &storagev1.StorageClass{AllowedTopologies: []v1.TopologySelectorTerm{{
		MatchLabelExpressions: []v1.TopologySelectorLabelRequirement{{Key: "zone", Values: []string{"z1", "z2"}}},
	}}}
	if !allowedByClass(readyNode("a", map[string]string{"zone": "z2"}), class) {
		t.Error("node in z2 refused")
	}
	if allowedByClass(readyNode("a", map[string]string{"zone": "z3"}), class) {
		t.Error("node in z3 allowed")
	}
	if allowedByClass(readyNode("a", nil), class) {
		t.Error("node without zone allowed")
	}
	if !allowedByClass(readyNode("a", nil), &storagev1.StorageClass{}) {
		t.Error("class without allowedTopologies refused a node")
	}
}

func TestRoomFor(t *testing.T) {
	node := readyNode("a", map[string]string{"topo/node": "a"})
	capFor := func(class, nodeName, capacity, maxSize string) *storagev1.CSIStorageCapacity {
		c := &storagev1.CSIStorageCapacity{StorageClassName: class,
			NodeTopology: &metav1.LabelSelector{MatchLabels: map[string]string{"topo/node": nodeName}}}
		if capacity != "" {
			q := resource.MustParse(capacity)
			c.Capacity = &q
		}
		if maxSize != "" {
			q := resource.MustParse(maxSize)
			c.MaximumVolumeSize = &q
		}
		return c
	}
	gi := int64(1 << 30)
	for _, tc := range []struct {
		name              string
		caps              []*storagev1.CSIStorageCapacity
		wantFit, wantKnow bool
	}{
		{"no objects: unknown, candidate", nil, true, false},
		{"enough", []*storagev1.CSIStorageCapacity{capFor("sc", "a", "5Gi", "")}, true, true},
		{"too little", []*storagev1.CSIStorageCapacity{capFor("sc", "a", "512Mi", "")}, false, true},
		{"max volume size counts", []*storagev1.CSIStorageCapacity{capFor("sc", "a", "5Gi", "512Mi")}, false, true},
		{"other node's object ignored", []*storagev1.CSIStorageCapacity{capFor("sc", "b", "1Mi", "")}, true, false},
		{"other class' object ignored", []*storagev1.CSIStorageCapacity{capFor("other", "a", "1Mi", "")}, true, false},
	} {
		fit, known := roomFor(node, "sc", gi, tc.caps)
		if fit != tc.wantFit || known != tc.wantKnow {
			t.Errorf("%s: fits %v known %v, want %v %v", tc.name, fit, known, tc.wantFit, tc.wantKnow)
		}
	}
}

func readyNode(name string, labels map[string]string) *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Status:     v1.NodeStatus{Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}}},
	}
}
