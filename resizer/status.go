package resizer

import (
	"maps"
	"slices"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// annNodeExpansionNotRequired on a claim tells kubelet that the volume
// needs no NodeExpandVolume after its controller expansion.
const annNodeExpansionNotRequired = "volume.kubernetes.io/node-expansion-not-required"

// resizeConditions are the claim conditions of a resize; each step replaces
// the ones of the step before.
var resizeConditions = []v1.PersistentVolumeClaimConditionType{
	v1.PersistentVolumeClaimResizing,
	v1.PersistentVolumeClaimFileSystemResizePending,
	v1.PersistentVolumeClaimControllerResizeError,
	v1.PersistentVolumeClaimNodeResizeError,
}

// The functions below return a changed copy of a claim: its status as each
// step leaves it.

// withResizing marks the claim as being grown to target by the controller.
// A try again at the same size keeps the last try's error condition.
func withResizing(claim *v1.PersistentVolumeClaim, target resource.Quantity) *v1.PersistentVolumeClaim {
	c := claim.DeepCopy()
	allocated, recorded := c.Status.AllocatedResources[v1.ResourceStorage]
	if recorded && allocated.Cmp(target) == 0 &&
		c.Status.AllocatedResourceStatuses[v1.ResourceStorage] == v1.PersistentVolumeClaimControllerResizeInProgress {
		keepOnly(c, v1.PersistentVolumeClaimResizing, v1.PersistentVolumeClaimControllerResizeError)
	} else {
		keepOnly(c)
	}
	setResizeStatus(c, v1.PersistentVolumeClaimControllerResizeInProgress)
	if c.Status.AllocatedResources == nil {
		c.Status.AllocatedResources = v1.ResourceList{}
	}
	c.Status.AllocatedResources[v1.ResourceStorage] = target
	setCondition(c, v1.PersistentVolumeClaimCondition{Type: v1.PersistentVolumeClaimResizing, Status: v1.ConditionTrue})
	delete(c.Annotations, annNodeExpansionNotRequired)
	return c
}

// withFailure records the driver's message; final marks the size asked for
// infeasible, which ends the resize until the request changes.
func withFailure(claim *v1.PersistentVolumeClaim, msg string, final bool) *v1.PersistentVolumeClaim {
	c := claim.DeepCopy()
	if final {
		setResizeStatus(c, v1.PersistentVolumeClaimControllerResizeInfeasible)
		keepOnly(c)
	}
	setCondition(c, v1.PersistentVolumeClaimCondition{Type: v1.PersistentVolumeClaimControllerResizeError,
		Status: v1.ConditionTrue, Message: msg})
	return c
}

// withResized records that the volume has size and nothing is left to do.
// allocatedResources, which quota counts, is raised to size if the volume
// is larger than was asked for (the driver never shrinks one).
func withResized(claim *v1.PersistentVolumeClaim, size resource.Quantity) *v1.PersistentVolumeClaim {
	c := claim.DeepCopy()
	if c.Status.Capacity == nil {
		c.Status.Capacity = v1.ResourceList{}
	}
	c.Status.Capacity[v1.ResourceStorage] = size
	if allocated, ok := c.Status.AllocatedResources[v1.ResourceStorage]; ok && allocated.Cmp(size) < 0 {
		c.Status.AllocatedResources[v1.ResourceStorage] = size
	}
	setResizeStatus(c, "")
	keepOnly(c)
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	c.Annotations[annNodeExpansionNotRequired] = "true"
	return c
}

// withNodeResizePending hands the rest of the resize to kubelet.
func withNodeResizePending(claim *v1.PersistentVolumeClaim) *v1.PersistentVolumeClaim {
	c := claim.DeepCopy()
	setResizeStatus(c, v1.PersistentVolumeClaimNodeResizePending)
	keepOnly(c)
	setCondition(c, v1.PersistentVolumeClaimCondition{Type: v1.PersistentVolumeClaimFileSystemResizePending,
		Status: v1.ConditionTrue, Message: "Waiting for kubelet to finish the expansion of the volume on the node."})
	return c
}

// setResizeStatus sets the resize status of the claim's storage, or removes
// it for "".
func setResizeStatus(c *v1.PersistentVolumeClaim, s v1.ClaimResourceStatus) {
	if s == "" {
		delete(c.Status.AllocatedResourceStatuses, v1.ResourceStorage)
		if len(c.Status.AllocatedResourceStatuses) == 0 {
			c.Status.AllocatedResourceStatuses = nil
		}
		return
	}
	if c.Status.AllocatedResourceStatuses == nil {
		c.Status.AllocatedResourceStatuses = map[v1.ResourceName]v1.ClaimResourceStatus{}
	}
	c.Status.AllocatedResourceStatuses[v1.ResourceStorage] = s
}

// keepOnly removes the resize conditions other than keep; conditions of
// other kinds stay.
func keepOnly(c *v1.PersistentVolumeClaim, keep ...v1.PersistentVolumeClaimConditionType) {
	c.Status.Conditions = slices.DeleteFunc(c.Status.Conditions, func(cond v1.PersistentVolumeClaimCondition) bool {
		return slices.Contains(resizeConditions, cond.Type) && !slices.Contains(keep, cond.Type)
	})
	if len(c.Status.Conditions) == 0 {
		c.Status.Conditions = nil
	}
}

// setCondition puts cond in place of the condition of its type. Its
// transition time is now, or the old one if the status did not change.
func setCondition(c *v1.PersistentVolumeClaim, cond v1.PersistentVolumeClaimCondition) {
	cond.LastTransitionTime = metav1.Now()
	i := slices.IndexFunc(c.Status.Conditions, func(old v1.PersistentVolumeClaimCondition) bool { return old.Type == cond.Type })
	if i < 0 {
		c.Status.Conditions = append(c.Status.Conditions, cond)
		return
	}
	if c.Status.Conditions[i].Status == cond.Status {
		cond.LastTransitionTime = c.Status.Conditions[i].LastTransitionTime
	}
	c.Status.Conditions[i] = cond
}

// sameStatus reports whether writing b's status and annotations over a's
// would change nothing.
func sameStatus(a, b *v1.PersistentVolumeClaim) bool {
	return equality.Semantic.DeepEqual(a.Status, b.Status) && maps.Equal(a.Annotations, b.Annotations)
}
