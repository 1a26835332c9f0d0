package duties

import (
	"cmp"
	"slices"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/sets"
)

// nodeLoad is a node that could take a claim and how many stickyvol volumes
// (made or promised) it already has.
type nodeLoad struct {
	name  string
	load  int
	known bool // a CSIStorageCapacity object vouches for the room
}

// pickNode returns the node for the claim: the least loaded node, nodes whose
// room is known first among equals, then by name, so that the choice is
// stable. Nodes in refused are skipped unless every node refused.
func pickNode(candidates []nodeLoad, refused sets.Set[string]) (string, bool) {
	var fresh []nodeLoad
	for _, c := range candidates {
		if !refused.Has(c.name) {
			fresh = append(fresh, c)
		}
	}
	if len(fresh) == 0 {
		return "", false
	}
	best := slices.MinFunc(fresh, func(a, b nodeLoad) int {
		if c := cmp.Compare(a.load, b.load); c != 0 {
			return c
		}
		if a.known != b.known {
			if a.known {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.name, b.name)
	})
	return best.name, true
}

// nodeUsable reports whether stickyvol can make volumes on node now: the node
// is Ready, not cordoned, and its kubelet registered the driver (the CSINode
// lists it), so that a pod can also mount the volume there.
func nodeUsable(node *v1.Node, csiNode *storagev1.CSINode, driver string) bool {
	return !node.Spec.Unschedulable && nodeReady(node) && csiNode != nil &&
		slices.ContainsFunc(csiNode.Spec.Drivers, func(d storagev1.CSINodeDriver) bool { return d.Name == driver })
}

func nodeReady(node *v1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == v1.NodeReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// allowedByClass reports whether node satisfies the class' allowedTopologies:
// any term matches when all its expressions match the node's labels.
func allowedByClass(node *v1.Node, class *storagev1.StorageClass) bool {
	if len(class.AllowedTopologies) == 0 {
		return true
	}
	return slices.ContainsFunc(class.AllowedTopologies, func(term v1.TopologySelectorTerm) bool {
		for _, expr := range term.MatchLabelExpressions {
			value, ok := node.Labels[expr.Key]
			if !ok || !slices.Contains(expr.Values, value) {
				return false
			}
		}
		return true
	})
}

// roomFor reports whether the node has room for size bytes of the class,
// according to the CSIStorageCapacity objects published for it. Without an
// object for the node the room is unknown and the node stays a candidate
// (known is false): capacity tracking is optional, and the driver answers
// ResourceExhausted anyway when it is full, which sends the claim back here.
func roomFor(node *v1.Node, class string, size int64, capacities []*storagev1.CSIStorageCapacity) (fits, known bool) {
	nodeLabels := labels.Set(node.Labels)
	for _, c := range capacities {
		if c.StorageClassName != class || c.NodeTopology == nil {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(c.NodeTopology)
		if err != nil || sel.Empty() || !sel.Matches(nodeLabels) {
			continue
		}
		limit := c.MaximumVolumeSize
		if limit == nil {
			limit = c.Capacity
		}
		if limit == nil {
			continue
		}
		return limit.Value() >= size, true
	}
	return true, false
}
