package resizer

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// claimIn is a bound claim that asks for want, has have, and whose resize
// status and allocated size are rs and allocated ("" for none).
func claimIn(want, have string, rs v1.ClaimResourceStatus, allocated string) *v1.PersistentVolumeClaim {
	c := &v1.PersistentVolumeClaim{
		Spec: v1.PersistentVolumeClaimSpec{VolumeName: "pv",
			Resources: v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse(want)}}},
		Status: v1.PersistentVolumeClaimStatus{Phase: v1.ClaimBound,
			Capacity: v1.ResourceList{v1.ResourceStorage: resource.MustParse(have)}},
	}
	if rs != "" {
		c.Status.AllocatedResourceStatuses = map[v1.ResourceName]v1.ClaimResourceStatus{v1.ResourceStorage: rs}
	}
	if allocated != "" {
		c.Status.AllocatedResources = v1.ResourceList{v1.ResourceStorage: resource.MustParse(allocated)}
	}
	return c
}

// TestPlan walks the state machine of the package documentation: what each
// status of a claim leads to.
func TestPlan(t *testing.T) {
	const (
		inProgress = v1.PersistentVolumeClaimControllerResizeInProgress
		infeasible = v1.PersistentVolumeClaimControllerResizeInfeasible
	)
	for _, tc := range []struct {
		name    string
		claim   *v1.PersistentVolumeClaim
		settled bool
		want    string // "" for no work
	}{
		{"nothing asked", claimIn("1Gi", "1Gi", "", ""), false, ""},
		{"less than it has (refused by the API server anyway)", claimIn("1Gi", "2Gi", "", ""), false, ""},
		{"more asked", claimIn("2Gi", "1Gi", "", ""), false, "2Gi"},
		{"more asked again after a resize", claimIn("3Gi", "2Gi", "", "2Gi"), false, "3Gi"},
		{"under way: finish the recorded size", claimIn("2Gi", "1Gi", inProgress, "2Gi"), false, "2Gi"},
		{"under way, request lowered since: the recorded size first", claimIn("1500Mi", "1Gi", inProgress, "2Gi"), false, "2Gi"},
		{"under way, the driver refused the last try: the request", claimIn("1500Mi", "1Gi", inProgress, "2Gi"), true, "1500Mi"},
		{"under way, no size recorded", claimIn("2Gi", "1Gi", inProgress, ""), false, "2Gi"},
		{"grown, not yet recorded on the claim", claimIn("2Gi", "1Gi", inProgress, "2Gi"), false, "2Gi"},
		{"infeasible, same request: wait for the user", claimIn("2Gi", "1Gi", infeasible, "2Gi"), false, ""},
		{"infeasible, request lowered: try it", claimIn("1500Mi", "1Gi", infeasible, "2Gi"), false, "1500Mi"},
		{"infeasible, request cancelled", claimIn("1Gi", "1Gi", infeasible, "2Gi"), false, "1Gi"},
		{"infeasible, request raised", claimIn("3Gi", "1Gi", infeasible, "2Gi"), false, "3Gi"},
		{"kubelet's turn", claimIn("2Gi", "1Gi", v1.PersistentVolumeClaimNodeResizePending, "2Gi"), false, ""},
		{"kubelet at work", claimIn("2Gi", "1Gi", v1.PersistentVolumeClaimNodeResizeInProgress, "2Gi"), false, ""},
		{"kubelet failed", claimIn("2Gi", "1Gi", v1.PersistentVolumeClaimNodeResizeInfeasible, "2Gi"), false, ""},
	} {
		target, work := plan(tc.claim, tc.settled)
		if work != (tc.want != "") || (work && target.Cmp(resource.MustParse(tc.want)) != 0) {
			t.Errorf("%s: plan = %s, %v; want %q", tc.name, target.String(), work, tc.want)
		}
	}
}

// TestStatusSteps checks the claim as each step leaves it: the fields
// kubelet and quota read, and the conditions a user sees.
func TestStatusSteps(t *testing.T) {
	storage := func(c *v1.PersistentVolumeClaim) (rs v1.ClaimResourceStatus, allocated, capacity string) {
		a, c2 := c.Status.AllocatedResources[v1.ResourceStorage], c.Status.Capacity[v1.ResourceStorage]
		return c.Status.AllocatedResourceStatuses[v1.ResourceStorage], a.String(), c2.String()
	}
	conditions := func(c *v1.PersistentVolumeClaim) map[v1.PersistentVolumeClaimConditionType]string {
		m := map[v1.PersistentVolumeClaimConditionType]string{}
		for _, cond := range c.Status.Conditions {
			m[cond.Type] = cond.Message
		}
		return m
	}
	start := claimIn("2Gi", "1Gi", "", "")
	start.Annotations = map[string]string{annNodeExpansionNotRequired: "true"}
	start.Status.Conditions = []v1.PersistentVolumeClaimCondition{{Type: "Unused", Status: v1.ConditionTrue}}

	marked := withResizing(start, resource.MustParse("2Gi"))
	if rs, a, _ := storage(marked); rs != v1.PersistentVolumeClaimControllerResizeInProgress || a != "2Gi" {
		t.Errorf("marked: %s, allocated %s", rs, a)
	}
	if _, ok := conditions(marked)[v1.PersistentVolumeClaimResizing]; !ok || len(marked.Status.Conditions) != 2 {
		t.Errorf("marked: conditions %v, want Unused and Resizing", marked.Status.Conditions)
	}
	if _, ok := marked.Annotations[annNodeExpansionNotRequired]; ok {
		t.Error("marked: the annotation of the last resize is still there")
	}
	if sameStatus(start, marked) || !sameStatus(marked, withResizing(marked, resource.MustParse("2Gi"))) {
		t.Error("marking twice should write once")
	}

	failed := withFailure(marked, "no room", false)
	if c := conditions(failed); c[v1.PersistentVolumeClaimControllerResizeError] != "no room" || len(c) != 3 {
		t.Errorf("failed, to be retried: conditions %v, want Unused, Resizing and the error", c)
	}
	if !sameStatus(failed, withResizing(failed, resource.MustParse("2Gi"))) {
		t.Error("trying again at the same size should keep the error and write nothing")
	}
	if c := conditions(withResizing(failed, resource.MustParse("1500Mi"))); len(c) != 2 {
		t.Errorf("a try at another size: conditions %v, want the error gone", c)
	}
	final := withFailure(marked, "too big", true)
	if rs, _, _ := storage(final); rs != v1.PersistentVolumeClaimControllerResizeInfeasible {
		t.Errorf("failed for good: %s", rs)
	}
	if c := conditions(final); c[v1.PersistentVolumeClaimControllerResizeError] != "too big" || len(c) != 2 {
		t.Errorf("failed for good: conditions %v, want Unused and the error", c)
	}

	done := withResized(failed, resource.MustParse("3Gi"))
	if rs, a, c := storage(done); rs != "" || done.Status.AllocatedResourceStatuses != nil || a != "3Gi" || c != "3Gi" {
		t.Errorf("done: status %q, allocated %s, capacity %s; want none, 3Gi, 3Gi", rs, a, c)
	}
	if c := conditions(done); len(c) != 1 {
		t.Errorf("done: conditions %v, want only Unused", c)
	}
	if done.Annotations[annNodeExpansionNotRequired] != "true" {
		t.Error("done: kubelet is not told that no node step is needed")
	}

	pending := withNodeResizePending(failed)
	if rs, _, c := storage(pending); rs != v1.PersistentVolumeClaimNodeResizePending || c != "1Gi" {
		t.Errorf("node step pending: %s, capacity %s", rs, c)
	}
	if c := conditions(pending); len(c) != 2 || c[v1.PersistentVolumeClaimFileSystemResizePending] == "" {
		t.Errorf("node step pending: conditions %v", c)
	}
}
